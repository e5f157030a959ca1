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


def test_with_no_api_key_the_demo_corpus_answers_extractively_with_citations(
    settings, tmp_path, superuser, monkeypatch
):
    """What `make run` does on a laptop with no API key: the default chain is the extractive provider."""
    import json
    import os
    import subprocess
    import sys

    from django.core.management import call_command

    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "KB_MODELS")}
    default_chain = subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='kb.settings'; "
         "from django.conf import settings; print(','.join(settings.KB_MODELS))"],
        env={**env, "KB_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert default_chain == "extractive"
    settings.KB_MODELS = default_chain.split(",")
    settings.KB_DATA_DIR = tmp_path
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    services.demo_corpus_ensure(stdout=lambda line: None)
    for document in Document.objects.all():
        services.document_process(document.pk)
    from io import StringIO

    out = StringIO()
    call_command("ask", "How do I report a security incident?", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["model"] == "extractive" and not result["refused"]
    assert "4444" in result["answer"]
    assert any(c["title"] == "IT Security Policy" and c["page"] for c in result["citations"])
