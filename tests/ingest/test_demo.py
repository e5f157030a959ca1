"""The demo corpus that `make run` loads on first start is real, readable and cited by section."""

import pytest

from ingest import services
from ingest.models import Document, DocumentStatus

pytestmark = pytest.mark.django_db


def test_demo_corpus_loads_once_and_every_file_becomes_ready(settings, tmp_path, superuser, monkeypatch):
    settings.KB_DATA_DIR = tmp_path
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    said = []
    assert services.demo_corpus_ensure(stdout=said.append) == 5
    assert "loaded 5 demo documents" in said[0]
    assert services.demo_corpus_ensure(stdout=said.append) == 0  # the second start loads nothing
    for document in Document.objects.all():
        services.document_process(document.pk)
    documents = {d.filename: d for d in Document.objects.all()}
    assert set(documents) == {
        "kb-user-guide.md",
        "it-security-policy.pdf",
        "travel-and-expenses.docx",
        "offices-and-facilities.html",
        "leave-and-holidays.txt",
    }
    for name, document in documents.items():
        assert document.status == DocumentStatus.READY, (name, document.error_message)
        assert document.uploaded_by == superuser
        assert document.chunks.count() >= 5, name
        assert all(chunk.heading_path for chunk in document.chunks.all())
    pdf = documents["it-security-policy.pdf"]
    assert pdf.title == "IT Security Policy"
    incident = pdf.chunks.get(text__contains="extension 4444")
    assert incident.heading_path[-1] == "6 Reporting incidents" and incident.page_start == 2
    html_text = " ".join(documents["offices-and-facilities.html"].chunks.values_list("text", flat=True))
    assert "analytics snippet" not in html_text and "Intranet home" not in html_text
