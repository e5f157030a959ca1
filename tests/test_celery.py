"""A task goes through a real broker to a real worker process and its result comes back."""

import json
import os
import time
from pathlib import Path
from queue import Empty

import pytest
from celery import Celery
from kombu import Connection

from kb import broker
from kb.search import embeddings
from tests.conftest import Worker, subprocess_env

pytestmark = pytest.mark.worker


def test_round_trip_through_the_embedded_broker(celery_worker):
    from kb.celery import ping

    result = ping.delay()
    assert result.get(timeout=60) == "pong", celery_worker.output()


def test_the_embedded_broker_is_kbs_folder_transport(celery_worker):
    from kb.celery import app

    with app.connection_for_write() as connection:
        assert type(connection.default_channel) is broker.Channel


def test_a_message_appears_in_the_queue_folder_only_when_written_whole(tmp_path, monkeypatch):
    """kombu's own transport opens the message file in the queue folder and writes it after: a worker listing the
    folder in between read an empty message and died (JSONDecodeError). Here nothing a queue matches exists until
    the content is complete."""
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    with Connection("filesystem://localhost/", transport=broker.Transport, transport_options=options) as connection:
        channel = connection.default_channel
        seen_before_rename = []
        replace = os.replace

        def watched_replace(source, target):
            seen_before_rename.append(sorted(os.listdir(folder)))
            assert json.loads(Path(source).read_bytes()) == {"body": "x" * 100_000}
            with pytest.raises(Empty):  # the partial file is no queue's message
                channel._get("celery")
            replace(source, target)

        monkeypatch.setattr(os, "replace", watched_replace)
        channel._put("celery", {"body": "x" * 100_000})
        ((partial,),) = seen_before_rename
        assert partial.startswith(".") and partial.endswith(".celery.msg.part")
        (message,) = os.listdir(folder)
        assert message.endswith(".celery.msg") and not message.startswith(".")
        assert channel._get("celery") == {"body": "x" * 100_000}
        assert os.listdir(folder) == []


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
