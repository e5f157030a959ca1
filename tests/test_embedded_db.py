"""The embedded PostgreSQL's shared buffers: sized for search, set for the server's next start."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import psycopg
import pytest
from django.db import connection

from kb import embedded_db
from kb.env import EnvError


def _buffers(uri: str) -> tuple[int, int | None]:
    """(running, configured for the next start or None) in MB."""
    with psycopg.connect(uri) as db:
        return embedded_db.shared_buffers_state(db)


@pytest.mark.django_db
def test_shared_buffers_are_set_for_the_next_start_once(caplog):
    params = connection.get_connection_params()
    uri = psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")}
    )
    caplog.set_level(logging.INFO, logger="kb.embedded_db")
    running, configured = _buffers(uri)
    try:
        embedded_db._size_shared_buffers(uri, 64)
        assert _buffers(uri) == (running, 64), "the running server keeps its buffers; the next start gets 64 MB"
        assert "shared_buffers 64 MB from its next start" in caplog.text
        caplog.clear()
        embedded_db._size_shared_buffers(uri, 64)
        assert not caplog.text, "already set: nothing written again"
    finally:
        with psycopg.connect(uri, autocommit=True) as db:
            if configured is None:
                db.execute("ALTER SYSTEM RESET shared_buffers")
            else:
                db.execute(f"ALTER SYSTEM SET shared_buffers = '{int(configured)}MB'")
    assert _buffers(uri) == (running, configured)


@pytest.mark.parametrize(("memory_mb", "expected"), [(256, 128), (4096, 1024), (6000, 1500), (65536, 2048)])
def test_shared_buffers_default_to_a_quarter_of_memory_up_to_2_gb(monkeypatch, memory_mb, expected):
    monkeypatch.delenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", raising=False)
    monkeypatch.setattr(embedded_db, "memory_mb", lambda: memory_mb)
    assert embedded_db.shared_buffers_mb() == expected
    monkeypatch.setenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", "100")
    assert embedded_db.shared_buffers_mb() == 100


def test_a_containers_memory_limit_counts_as_its_memory(monkeypatch, tmp_path):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=64 * 2**30))
    limit = tmp_path / "memory.max"
    limit.write_text(f"{2 * 2**30}\n")
    original = embedded_db.Path
    monkeypatch.setattr(embedded_db, "Path", lambda p: limit if p == "/sys/fs/cgroup/memory.max" else original(p))
    assert embedded_db.memory_mb() == 2048
    limit.write_text("max\n")
    assert embedded_db.memory_mb() == 65536


@pytest.mark.parametrize("value", ["2GB", "-5", "8", "0x100", "99999999"])
def test_a_bad_shared_buffers_setting_fails_loudly_before_the_server_starts(monkeypatch, value):
    monkeypatch.setattr(embedded_db, "memory_mb", lambda: 8192)
    monkeypatch.setenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", value)
    with pytest.raises(EnvError, match="KB_EMBEDDED_PG_SHARED_BUFFERS_MB"):
        embedded_db.shared_buffers_mb()
