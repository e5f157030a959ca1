"""Database checks that must hold before kb starts."""

from __future__ import annotations

from contextlib import contextmanager

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


# --- least privilege: the owner migrates, the application runs as a role that cannot rewrite the audit log --------

# The role `make run` creates on the embedded server and serves web, worker and beat with.
APP_ROLE = "kb_app"
# Tables the application appends to and never changes: no UPDATE, DELETE or TRUNCATE for its role, and, not
# owning them, it cannot disable their triggers either. Their removal (retention) runs as the owner.
APPEND_ONLY_MODELS = ("audit.AuditEvent", "audit.ChainCheck", "audit.Checkpoint")


def app_role_sql(role: str, database: str, *, create: bool = True) -> list[str]:
    """The statements that give `role` what the application needs in `database` (run as the tables' owner
    after every migration: new tables need their grants). Idempotent. `create`: also create the role (no
    password: the embedded server trusts its own socket) and make sure it holds no special attributes."""
    from django.apps import apps

    name = connection.ops.quote_name
    append_only = ", ".join(name(apps.get_model(label)._meta.db_table) for label in APPEND_ONLY_MODELS)
    created = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {name(role)} LOGIN; END IF; END $$",
        f"ALTER ROLE {name(role)} NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS",
    ]
    return [
        *(created if create else []),
        f"GRANT CONNECT ON DATABASE {name(database)} TO {name(role)}",
        f"GRANT USAGE ON SCHEMA public TO {name(role)}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name(role)}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name(role)}",
        f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {append_only} FROM {name(role)}",
    ]


def app_role_ensure(role: str = APP_ROLE, *, create: bool = True) -> None:
    """(Create and) grant the application role its privileges, as the current (owner) connection."""
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        for statement in app_role_sql(role, database, create=create):
            cursor.execute(statement)


def url_as_role(url: str, role: str) -> str:
    """`url` (postgresql://USER[:PASSWORD]@HOST/NAME?...) with its user replaced by `role`, without a password:
    for the embedded server, which trusts its own socket."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@contextmanager
def connected_as(url: str | None):
    """Run this process's default database connection as the role in `url` (same server) for the block: the
    retention purge runs as the owner (KB_DATABASE_OWNER_URL) while everything else runs as the application.
    None (no owner URL set: one role does everything) leaves the connection as it is."""
    if not url:
        yield
        return
    import dj_database_url
    from django.db import connections

    wrapper = connections["default"]
    target = dj_database_url.parse(url)
    if "host" in target.get("OPTIONS", {}):
        target["HOST"] = target["OPTIONS"].pop("host")
    keys = ("USER", "PASSWORD", "HOST", "PORT", "NAME")
    saved = {key: wrapper.settings_dict.get(key) for key in keys}
    saved_pool = wrapper.settings_dict["OPTIONS"].pop("pool", None)  # the pool's connections are the app's
    wrapper.close()
    wrapper.settings_dict.update({key: target.get(key) or "" for key in keys})
    try:
        yield
    finally:
        wrapper.close()
        wrapper.settings_dict.update(saved)
        if saved_pool is not None:
            wrapper.settings_dict["OPTIONS"]["pool"] = saved_pool
