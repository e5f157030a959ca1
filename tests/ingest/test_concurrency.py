"""Document frequencies and corpus statistics stay exact when documents are ingested and deleted at once."""

from __future__ import annotations

import threading

import pytest
from django.core.files.base import ContentFile
from django.db import connection

from ingest import services
from ingest.models import Document, DocumentStatus
from tests.ingest.test_services import assert_index_consistent

pytestmark = pytest.mark.django_db(transaction=True)

TOPICS = ["travel", "expenses", "parking", "security", "holidays", "payroll"]


def _text(i: int) -> bytes:
    # Overlapping vocabularies, so that concurrent transactions update the same terms.
    words = " ".join(TOPICS[(i + j) % len(TOPICS)] for j in range(4))
    return f"# Memo {i}\n\nThis memo covers {words} rules for every office.\n\nAsk the desk about {words}.\n".encode()


def test_concurrent_ingestion_and_deletion_keep_the_keyword_index_exact(monkeypatch):
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    doomed = []
    for i in range(4):
        result = services.document_upload(source=ContentFile(_text(100 + i), name=f"old{i}.md"), filename=f"old{i}.md")
        services.document_process(result.document.pk)
        doomed.append(result.document)
    fresh = [
        services.document_upload(source=ContentFile(_text(i), name=f"memo{i}.md"), filename=f"memo{i}.md").document
        for i in range(8)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(action) -> None:
        try:
            start.wait()
            action()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)
        finally:
            connection.close()

    jobs = [lambda d=d: services.document_process(d.pk) for d in fresh[:4]]
    jobs.append(lambda: [services.document_delete(document=d) for d in doomed])
    jobs.append(lambda: [services.document_process(d.pk) for d in fresh[4:]])
    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert set(Document.objects.filter(pk__in=[d.pk for d in fresh]).values_list("status", flat=True)) == {
        DocumentStatus.READY
    }
    assert_index_consistent()


def test_two_versions_going_live_at_once_leave_exactly_one_serving(monkeypatch):
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    base = b"# Handbook\n\n## Travel\n\nTrains for trips under 700 kilometres.\n"
    v1 = services.document_upload(source=ContentFile(base, name="handbook.md"), filename="handbook.md").document
    services.document_process(v1.pk)
    v2 = services.document_upload(source=ContentFile(base + b"\nTwo.\n", name="handbook.md"), filename="handbook.md")
    v3 = services.document_upload(source=ContentFile(base + b"\nThree.\n", name="handbook.md"), filename="handbook.md")
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def go(document_id: int) -> None:
        try:
            start.wait()
            services.document_process(document_id)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=go, args=(r.document.pk,)) for r in (v2, v3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    serving = list(Document.objects.filter(lineage=v1.lineage, searchable=True).values_list("version", flat=True))
    assert serving == [3]
    assert_index_consistent()
