"""Database checks that must hold before kb starts."""

from __future__ import annotations

import psycopg
from django.db import OperationalError, connection

CHECK_CONNECT_TIMEOUT_S = 5


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
    # A connection of its own, not from the pool: a pool would keep retrying for its whole timeout.
    params = connection.get_connection_params()
    params = {k: v for k, v in params.items() if k in ("dbname", "user", "password", "host", "port", "options")}
    try:
        with psycopg.connect(**params, connect_timeout=CHECK_CONNECT_TIMEOUT_S) as direct:
            row = direct.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
            available = row is not None
    except (OperationalError, psycopg.OperationalError) as exc:
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(
            f"cannot reach the database at {_where()} ({reason}): check DATABASE_URL and that the server is running"
        ) from None
    if not available:
        raise PgvectorMissing(
            f"DATABASE_URL points at a PostgreSQL ({_where()}) without the pgvector extension: install pgvector "
            "on that server (Debian: postgresql-NN-pgvector) or unset DATABASE_URL to use the embedded database"
        )
