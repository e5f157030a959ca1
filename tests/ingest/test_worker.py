"""Ingestion through real Celery workers: the `ingest --wait` command, and a worker killed mid-document and
mid-batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from ingest.models import Chunk, Document, DocumentStatus
from tests.conftest import BASE_DIR, Worker, subprocess_env
from tests.ingest import fixtures_build as build

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def wait_for(predicate, timeout: float, what: str, worker: Worker | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(
        f"timed out waiting for {what}"
        + (f"\n{worker.queue()}\nworker log:\n{worker.output()[-3000:]}" if worker else "")
    )


def test_ingest_command_indexes_a_mixed_folder_through_the_worker(celery_worker, test_database_url, tmp_path):
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "policy.pdf").write_bytes(build.policy_pdf())
    (folder / "handbook.docx").write_bytes(build.build_docx())
    (folder / "intranet.html").write_bytes(build.build_html())
    (folder / "nested" / "onboarding.md").write_bytes(build.build_markdown())
    (folder / "notes.txt").write_bytes(build.cp1252_text())
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog")
    (folder / ".hidden.md").write_bytes(b"# never ingested\n")
    sent_together = "Task ingest.process_documents["  # received, then succeeded
    before = celery_worker.output().count(sent_together)

    result = subprocess.run(
        [sys.executable, "manage.py", "ingest", str(folder), "--group", "Staff", "--wait"],
        cwd=BASE_DIR,
        env=subprocess_env(test_database_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # one file failed, and the command says so
    summary = result.stdout
    assert "6 files: 5 ingested, 0 queued, 0 duplicates, 1 failed" in summary, result.stderr[-3000:]
    assert "broken.pdf" in summary
    # The four small documents went in one message (the PDFs each in their own).
    wait_for(lambda: celery_worker.output().count(sent_together) - before == 2, 30, "the task's log", celery_worker)

    documents = {d.filename: d for d in Document.objects.all()}
    assert set(documents) == {
        "policy.pdf",
        "handbook.docx",
        "intranet.html",
        "onboarding.md",
        "notes.txt",
        "broken.pdf",
    }
    for name, document in documents.items():
        if name == "broken.pdf":
            assert document.status == DocumentStatus.FAILED and document.error_message
            continue
        assert document.status == DocumentStatus.READY, (name, document.error_message)
        assert [g.name for g in document.access_groups.all()] == ["Staff"]
        chunks = list(document.chunks.all())
        assert chunks, name
        for chunk in chunks:
            assert chunk.document_id == document.pk
            assert chunk.heading_path, (name, chunk.text)
            if name == "policy.pdf":
                assert chunk.page_start in (1, 2)
    pdf_pages = {c.page_start for c in documents["policy.pdf"].chunks.all()}
    assert pdf_pages == {1, 2}
    assert documents["policy.pdf"].title == "Travel Policy"


def test_a_worker_killed_mid_document_is_finished_by_another_with_no_duplicates(test_database_url, tmp_path):
    # A queue of this test's own, so that no other worker takes the document; small batches, so that
    # progress is written often and the kill lands in the middle of embedding.
    env = subprocess_env(test_database_url, KB_EMBEDDING_BATCH_SIZE="4", KB_BROKER_DIR=str(tmp_path / "broker"))
    source = tmp_path / "long.txt"
    source.write_text(
        "\n\n".join(
            f"Section {i} explains procedure {i} in detail. "
            + "It covers approvals, budgets and reporting lines. " * 12
            for i in range(60)
        )
    )

    def manage(*argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *argv], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("ingest", str(source))
    document = Document.objects.get(filename="long.txt")
    first = Worker(env, tmp_path / "first.log")
    first.start()
    try:
        wait_for(
            lambda: Document.objects.filter(
                pk=document.pk, status=DocumentStatus.EMBEDDING, chunks_embedded__gt=0
            ).exists(),
            120,
            "embedding to start",
            first,
        )
    finally:
        first.stop(signal.SIGKILL)
    document.refresh_from_db()
    assert document.status == DocumentStatus.EMBEDDING
    assert 0 < document.chunks_embedded < document.chunks_total
    assert not document.chunks.exists()  # nothing half-written: chunks are committed at the end

    second = Worker(env, tmp_path / "second.log")
    second.start()
    try:
        assert "1 stalled documents sent" in manage("reindex", "--stalled", "--stalled-for", "0")
        wait_for(
            lambda: Document.objects.filter(pk=document.pk, status=DocumentStatus.READY).exists(),
            180,
            "the second worker to finish",
            second,
        )
    finally:
        second.stop()
    document.refresh_from_db()
    ordinals = list(document.chunks.order_by("ordinal").values_list("ordinal", flat=True))
    assert ordinals == list(range(document.chunks_total))
    assert document.attempts == 2


def test_a_worker_killed_mid_batch_has_each_document_finished_once_by_another(test_database_url, tmp_path):
    # Ten small documents taken as one batch; small embedding steps, so that the kill lands between two.
    env = subprocess_env(
        test_database_url,
        KB_EMBEDDING_BATCH_SIZE="4",
        KB_INGEST_BATCH_DOCUMENTS="10",
        KB_BROKER_DIR=str(tmp_path / "broker"),
    )
    folder = tmp_path / "notes"
    folder.mkdir()
    for n in range(10):
        (folder / f"note-{n}.txt").write_text(
            "\n\n".join(
                f"Note {n}, rule {i}: requests of kind {n}-{i} go to desk {i}. "
                + "Approvals follow the usual path. " * 25
                for i in range(8)
            )
        )
    result = subprocess.run(
        [sys.executable, "manage.py", "ingest", str(folder)], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    ids = list(Document.objects.filter(filename__startswith="note-").values_list("pk", flat=True))
    assert len(ids) == 10
    first = Worker(env, tmp_path / "first.log")
    first.start()
    try:
        wait_for(
            lambda: Document.objects.filter(
                pk__in=ids, status=DocumentStatus.EMBEDDING, chunks_embedded__gt=0
            ).exists(),
            120,
            "embedding to start",
            first,
        )
    finally:
        first.stop(signal.SIGKILL)
    states = Counter(Document.objects.filter(pk__in=ids).values_list("status", flat=True))
    assert states == {DocumentStatus.EMBEDDING: 10}  # all ten taken together, none written
    assert not Chunk.objects.filter(document__in=ids).exists()

    second = Worker(env, tmp_path / "second.log")
    second.start()
    try:
        resent = subprocess.run(
            [sys.executable, "manage.py", "reindex", "--stalled", "--stalled-for", "0"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
        )
        assert "10 stalled documents sent" in resent.stdout, resent.stderr
        wait_for(
            lambda: Document.objects.filter(pk__in=ids, status=DocumentStatus.READY).count() == 10,
            240,
            "the second worker to finish",
            second,
        )
    finally:
        second.stop()
    for document in Document.objects.filter(pk__in=ids):
        ordinals = list(document.chunks.order_by("ordinal").values_list("ordinal", flat=True))
        assert ordinals == list(range(document.chunks_total)) and document.chunks_total >= 8
        assert document.attempts == 2  # claimed once by each worker: never twice at the same time


def test_a_worker_keeps_its_database_connection_between_documents(test_database_url, tmp_path, monkeypatch):
    """Celery's Django fix-up would close the connection around every task (a cold PostgreSQL backend for each
    document); with CELERY_DB_REUSE_MAX the worker's connection serves document after document."""
    from django.core.files.base import ContentFile
    from django.db import connection
    from kombu import Connection

    from ingest import services
    from ingest.tasks import process_document

    # A worker and a queue of this test's own (as the kill tests have), sent to from here.
    broker = tmp_path / "broker"
    worker = Worker(
        subprocess_env(test_database_url, KB_DB_POOL_SIZE="0", KB_BROKER_DIR=str(broker)), tmp_path / "w.log"
    )
    (broker / "queue").mkdir(parents=True)
    queue = str(broker / "queue")
    options = {
        "data_folder_in": queue,
        "data_folder_out": queue,
        "store_processed": False,
        "control_folder": str(broker / "control"),
    }
    sender = Connection("filesystem://localhost/", transport="kb.broker:Transport", transport_options=options)
    monkeypatch.setattr(
        services,
        "enqueue_processing",
        lambda document_id: bool(process_document.apply_async((document_id,), connection=sender)),
    )

    def upload_and_wait(name: str) -> None:
        text = f"# {name}\n\nThe {name} procedure needs a signed form and a manager's approval.\n"
        result = services.document_upload(source=ContentFile(text.encode(), name=f"{name}.md"), filename=f"{name}.md")
        assert result.accepted, result.message
        wait_for(
            lambda: Document.objects.filter(pk=result.document.pk, status=DocumentStatus.READY).exists(),
            120,
            f"{name} to be indexed",
            worker,
        )

    def sessions() -> int:
        """Connections ever opened to this database (PostgreSQL counts them as they are established)."""
        time.sleep(1.5)  # other backends report their statistics at most once a second
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]

    worker.start()
    try:
        upload_and_wait("warm-up")
        before = sessions()
        for name in ("expenses", "travel", "leave"):
            upload_and_wait(name)
        assert sessions() == before  # no connection opened for the later documents
    finally:
        worker.stop()
        sender.release()
