"""Faults an upload can meet, for real: a full disk (a tiny tmpfs as the media folder) and a broker that is
down (Redis stopped, then started again). Each upload either lands whole or is refused with what to do;
nothing half-stored, nothing lost."""

from __future__ import annotations

import html
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from ingest import services
from ingest.models import Document, DocumentStatus
from kb.accounts.services import api_token_create
from kb.audit.models import AuditEvent
from tests.conftest import BASE_DIR, Worker, subprocess_env

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_disk(tmp_path, settings):
    """A 256 KiB filesystem as the media folder (needs root, as `make test` on the CI machine has)."""
    mount = tmp_path / "media"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}): the full-disk test needs root")
    settings.MEDIA_ROOT = mount
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _text(kib: int, seed: str) -> bytes:
    line = f"{seed}: the travel desk books hotels and trains for every employee.\n".encode()
    return (line * (kib * 1024 // len(line) + 1))[: kib * 1024]


def test_a_full_disk_refuses_the_upload_clearly_and_keeps_everything_else(
    small_disk, client, knowledge_admin, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    first = services.document_upload(source=ContentFile(_text(100, "first")), filename="first.txt")
    assert first.outcome == "queued"
    events = AuditEvent.objects.count()

    client.force_login(knowledge_admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("document_upload"),
            {"files": [ContentFile(_text(300, "big"), name="big.txt")]},
            follow=True,
        )
    assert response.status_code == 200
    body = html.unescape(response.content.decode())
    assert "big.txt was not stored: the server's disk is full. Nothing was changed" in body
    assert not Document.objects.filter(filename="big.txt").exists()
    assert AuditEvent.objects.count() == events  # no upload event for what was not stored
    stored = [p.name for p in small_disk.rglob("*") if p.is_file()]
    assert stored == [first.document.original.name.rsplit("/", 1)[-1]], "no partial file is left behind"
    assert first.document.original.read() == _text(100, "first")
    # The disk still takes what fits.
    assert services.document_upload(source=ContentFile(_text(20, "small")), filename="small.txt").outcome == "queued"


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_with_the_broker_down_an_upload_is_accepted_queued_and_processed_once_it_is_back(
    redis_url, test_database_url, tmp_path
):
    # The upload runs in a process of its own whose broker is down (this process's Celery app and its
    # pooled connections stay as they are for the other tests).
    down = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    source = tmp_path / "parking.md"
    source.write_text("# Parking\n\nVisitors park on level -1.\n")
    started = time.monotonic()
    uploaded = subprocess.run(
        [sys.executable, "manage.py", "ingest", str(source)],
        cwd=BASE_DIR,
        env=subprocess_env(test_database_url, CELERY_BROKER_URL=down),
        capture_output=True,
        text=True,
        timeout=120,
    )
    waited = time.monotonic() - started
    assert uploaded.returncode == 0, uploaded.stderr
    assert "1 files: 0 ingested, 1 queued, 0 duplicates, 0 failed" in uploaded.stdout
    assert "could not enqueue document" in uploaded.stderr, "the broker outage is logged"
    assert waited < 30, "a dead broker must not hold the upload for long"
    document = Document.objects.get(filename="parking.md")
    assert document.status == DocumentStatus.QUEUED

    # The broker is back: the resumer (beat, every minute; here by hand) sends what waited, a worker indexes it.
    worker = Worker(subprocess_env(test_database_url, CELERY_BROKER_URL=redis_url), tmp_path / "worker.log")
    worker.start()
    try:
        # Queued longer than KB_INGEST_QUEUED_RESEND_SECONDS, as it would be after a long outage.
        Document.objects.filter(pk=document.pk).update(created_at=timezone.now() - timedelta(hours=2))
        env = subprocess_env(test_database_url, CELERY_BROKER_URL=redis_url)
        resent = subprocess.run(
            [sys.executable, "manage.py", "reindex", "--stalled", "--stalled-for", "0"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resent.returncode == 0, resent.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            document.refresh_from_db()
            if document.status == DocumentStatus.READY:
                break
            time.sleep(0.3)
        assert document.status == DocumentStatus.READY, worker.output()[-3000:]
        assert document.chunks.count() == document.chunks_total == 1
    finally:
        worker.stop()


# Django's spool file fails to flush on close when the disk is full (harmless: it is removed).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_while_a_large_upload_is_read_is_a_507_that_says_so(small_disk, knowledge_admin, settings):
    """Uploads above FILE_UPLOAD_MAX_MEMORY_SIZE are spooled to FILE_UPLOAD_TEMP_DIR while the request is read,
    before any view runs: a full disk there is answered 507 with what to do, not a bare 500."""
    from django.test import Client

    settings.FILE_UPLOAD_TEMP_DIR = str(small_disk)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    _, token = api_token_create(user=knowledge_admin)
    client = Client(raise_request_exception=False)
    client.force_login(knowledge_admin)
    for path, extra in (
        ("/api/v1/documents", {"headers": {"Authorization": f"Bearer {token}"}}),
        (reverse("document_upload"), {}),
    ):
        response = client.post(path, {"files": [ContentFile(_text(400, "huge"), name="huge.txt")]}, **extra)
        assert response.status_code == 507, (path, response.status_code)
        assert "The server's disk is full, so the upload was not stored" in html.unescape(response.content.decode())
    assert not Document.objects.filter(filename="huge.txt").exists()
