"""Database checks that must hold before kb starts."""

from __future__ import annotations

from django.db import OperationalError, connection


class PgvectorMissing(RuntimeError):
    pass


class DatabaseUnreachable(RuntimeError):
    pass


def _where() -> str:
    # Host, port and name only: the URL may carry a password, which must never reach a log.
    params = connection.get_connection_params()
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname', '')}"


def pgvector_ensure_available() -> None:
    """Refuse to start on a PostgreSQL that is unreachable or lacks pgvector, naming the fix."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            available = cursor.fetchone() is not None
    except OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(
            f"cannot reach the database at {_where()} ({reason}): check DATABASE_URL and that the server is running"
        ) from None
    if not available:
        raise PgvectorMissing(
            f"DATABASE_URL points at a PostgreSQL ({_where()}) without the pgvector extension: install pgvector "
            "on that server (Debian: postgresql-NN-pgvector) or unset DATABASE_URL to use the embedded database"
        )
