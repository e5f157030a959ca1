"""Database phases of the ask path under ASGI: synchronous work in a per-request thread, at most
KB_ASK_DB_CONCURRENCY phases at once per process, and no connection held between phases (a stream waiting
on a model holds none, so hundreds of answers can stream from one process)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from kb.unavailable import is_database_unavailable

logger = logging.getLogger(__name__)

_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _phase(function):
    """Run a sync database phase: in the caller's thread for sync callers, a per-request thread under ASGI.
    Outside a transaction (a request, not a test) the connection is closed at the end."""

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return sync_to_async(run, thread_sensitive=True)


def _db_limit() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    limit = _limits.get(loop)
    if limit is None:
        limit = _limits[loop] = asyncio.Semaphore(settings.KB_ASK_DB_CONCURRENCY)
    return limit


async def run_phase(function, *args, **kwargs):
    async with _db_limit():
        return await _phase(function)(*args, **kwargs)


async def run_phase_patiently(function, *args, what: str = "", **kwargs):
    """`run_phase`, waiting out a database that is briefly away (a restart, a failover): an answer that has
    been written must not be lost from the record. Gives up after KB_RECORD_RETRY_S."""
    deadline = time.monotonic() + settings.KB_RECORD_RETRY_S
    pause = 0.5
    while True:
        try:
            return await run_phase(function, *args, **kwargs)
        except Exception as exc:
            if not is_database_unavailable(exc) or time.monotonic() + pause > deadline:
                raise
            logger.warning("%s not recorded yet, the database is unavailable: retrying", what)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)
