"""Database checks that must hold before kb starts."""

from __future__ import annotations

from django.db import connection


class PgvectorMissing(RuntimeError):
    pass


def pgvector_ensure_available() -> None:
    """Refuse to start on a PostgreSQL without the pgvector extension, naming the fix."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        available = cursor.fetchone() is not None
    if not available:
        params = connection.get_connection_params()
        where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname', '')}"
        raise PgvectorMissing(
            f"DATABASE_URL points at a PostgreSQL ({where}) without the pgvector extension: install pgvector "
            "on that server (Debian: postgresql-NN-pgvector) or unset DATABASE_URL to use "
            "the embedded database"
        )
