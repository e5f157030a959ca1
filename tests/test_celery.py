"""A task goes through a real broker to a real worker process and its result comes back."""

import time

import pytest
from celery import Celery

from kb.search import embeddings
from tests.conftest import Worker, subprocess_env

pytestmark = pytest.mark.worker


def test_round_trip_through_the_embedded_broker(celery_worker):
    from kb.celery import ping

    result = ping.delay()
    assert result.get(timeout=60) == "pong", celery_worker.output()


def test_round_trip_through_redis(redis_url, test_database_url, tmp_path):
    worker = Worker(subprocess_env(test_database_url, CELERY_BROKER_URL=redis_url), tmp_path / "worker.log")
    worker.start()
    client = Celery("kb-test", broker=redis_url, backend=redis_url)
    try:
        assert client.send_task("kb.ping").get(timeout=60) == "pong", worker.output()
    finally:
        worker.stop()
        client.close()
    assert "redis://127.0.0.1" in worker.output()


def test_each_pool_process_loads_its_model_at_start_with_its_share_of_the_cores(test_database_url, tmp_path):
    worker = Worker(
        subprocess_env(test_database_url, KB_DB_POOL_SIZE="0", KB_WORKER_TORCH_THREADS="1"),
        tmp_path / "worker.log",
        concurrency=2,
    )
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while worker.output().count(f"embedding model {embeddings.model_id()} loaded") < 2:
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.2)
        assert worker.output().count("pool process of 2: embedding with 1 torch threads") == 2
    finally:
        worker.stop()


def test_a_worker_stopped_as_honcho_stops_it_shuts_down_cleanly(test_database_url, tmp_path):
    # honcho (make run's Ctrl-C) sends SIGTERM to the worker's whole process group, and SIGKILL after a wait
    # (kb.launcher raises honcho's 5 s to HONCHO_KILL_WAIT_S: a warm shutdown of two pool processes takes ~7 s here).
    import os
    import signal

    from kb.launcher import HONCHO_KILL_WAIT_S

    worker = Worker(subprocess_env(test_database_url, KB_DB_POOL_SIZE="0"), tmp_path / "worker.log", concurrency=2)
    worker.start()
    deadline = time.monotonic() + 90
    while worker.output().count(f"embedding model {embeddings.model_id()} loaded") < 2:
        assert time.monotonic() < deadline and worker.process.poll() is None, worker.output()[-3000:]
        time.sleep(0.2)
    stopping = time.monotonic()
    os.killpg(worker.process.pid, signal.SIGTERM)
    try:
        returncode = worker.process.wait(timeout=HONCHO_KILL_WAIT_S)
    except Exception:
        returncode = None
    finally:
        worker.stop(signal.SIGKILL)
    log = worker.output()
    assert returncode == 0 and time.monotonic() - stopping < HONCHO_KILL_WAIT_S, log[-3000:]
    assert "ERROR" not in log and "exited with 'signal" not in log, log[-3000:]
    # Start-up warnings an operator can do nothing about are gone (issue 17, hole 10).
    assert "No hostname was supplied" not in log and "superuser privileges" not in log, log[-3000:]
