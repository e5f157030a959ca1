"""The demo corpus that `make run` loads on first start is real, readable and cited by section; it lives in its
own access group, answers only until the company's own documents are ready, and goes in one command."""

from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import connection

from ingest import services
from ingest.models import Document, DocumentStatus, ReadScope
from kb.accounts.models import AccessGroup
from kb.audit.models import AuditEvent, AuditKind
from tests.factories import AccessGroupFactory

pytestmark = pytest.mark.django_db


def test_demo_corpus_loads_once_and_every_file_becomes_ready(settings, tmp_path, superuser, monkeypatch):
    settings.KB_DATA_DIR = tmp_path
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    said = []
    assert services.demo_corpus_ensure(stdout=said.append) == 5
    assert "loaded 5 demo documents" in said[0] and "manage.py demo --remove" in said[0]
    assert services.demo_corpus_ensure(stdout=said.append) == 0  # the second start loads nothing
    for document in Document.objects.all():
        services.document_process(document.pk)
    documents = {d.filename: d for d in Document.objects.all()}
    demo_group = AccessGroup.objects.get(demo=True)
    assert demo_group.name == "Demo"
    assert all(list(d.access_groups.all()) == [demo_group] for d in documents.values())
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


def _readable_ids(scope: ReadScope) -> set[int]:
    """The ids the search legs' SQL admits for `scope`, run as the legs run it."""
    condition, params = scope.sql()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM ingest_document WHERE {condition}", params)
        return {row[0] for row in cursor.fetchall()}


def _document(title: str, *, searchable: bool = True, groups=()) -> Document:
    document = Document.objects.create(
        title=title,
        filename=f"{title}.md",
        sha256=title.ljust(64, "0")[:64],
        size=1,
        searchable=searchable,
        status=DocumentStatus.READY if searchable else DocumentStatus.QUEUED,
    )
    document.access_groups.set(groups)
    return document


def test_the_demo_corpus_is_read_by_everyone_only_while_no_own_document_is_searchable(employee, superuser):
    demo_group = services.demo_group_ensure()
    hr = AccessGroupFactory(name="HR")
    demo = _document("demo", groups=[demo_group])
    scopes = {"employee": ReadScope.for_user(employee), "admin": ReadScope.for_user(superuser)}
    for name, scope in scopes.items():  # a fresh install: every reader reads the demo corpus
        assert Document.objects.searchable().in_scope(scope).filter(pk=demo.pk).exists(), name
        assert demo.pk in _readable_ids(scope), name
    queued = _document("company-queued", searchable=False)
    assert demo.pk in _readable_ids(scopes["employee"])  # an upload still processing changes nothing yet
    # The company's first ready document, even one this employee may not read, retires the demo corpus for all.
    hr_only = _document("company-hr", groups=[hr])
    for name, scope in scopes.items():
        assert demo.pk not in _readable_ids(scope), name
        assert not Document.objects.in_scope(scope).filter(pk=demo.pk).exists(), name
    assert _readable_ids(scopes["admin"]) == {hr_only.pk}
    assert _readable_ids(scopes["employee"]) == set()
    assert not Document.objects.readable_by(employee).filter(pk__in=[demo.pk, hr_only.pk]).exists()
    assert queued.pk in set(Document.objects.readable_by(employee).values_list("pk", flat=True))
    assert _readable_ids(ReadScope(nothing=True)) == set()


def test_demo_remove_deletes_every_demo_document_audited_and_load_brings_them_back(loaded_demo, settings):
    own = services.document_upload(source=ContentFile(b"# Own\n\nOur own rules.\n", name="own.md"), filename="own.md")
    out = StringIO()
    call_command("demo", "--remove", stdout=out)
    assert "5 demo document versions deleted" in out.getvalue()
    assert {d.status for d in Document.objects.filter(pk__in=[d.pk for d in loaded_demo])} == {DocumentStatus.DELETED}
    assert Document.objects.get(pk=own.document.pk).status == DocumentStatus.QUEUED
    deleted = AuditEvent.objects.filter(kind=AuditKind.DOCUMENT_DELETE)
    assert sorted(id for event in deleted for id in event.document_ids) == sorted(d.pk for d in loaded_demo)
    assert services.demo_corpus_ensure(stdout=lambda line: None) == 0  # the next start does not bring them back
    call_command("demo", "--remove", stdout=(out := StringIO()))
    assert "no demo documents to remove" in out.getvalue()

    call_command("demo", "--load", stdout=(out := StringIO()))
    assert "5 demo documents queued for indexing, 0 already loaded" in out.getvalue()
    assert Document.objects.current().demo().count() == 5
    call_command("demo", "--load", stdout=(out := StringIO()))
    assert "0 demo documents queued for indexing, 5 already loaded" in out.getvalue()
    assert AccessGroup.objects.filter(demo=True).count() == 1


def test_the_demo_group_never_takes_over_a_company_group_of_the_same_name():
    company_demo = AccessGroupFactory(name="Demo")
    group = services.demo_group_ensure()
    assert group.demo and group.name == "Demo corpus" and group.pk != company_demo.pk
    assert not AccessGroup.objects.get(pk=company_demo.pk).demo
    assert services.demo_group_ensure() == group


def test_an_install_from_before_the_demo_group_moves_its_demo_documents_into_it_once(settings, tmp_path, monkeypatch):
    settings.KB_DATA_DIR = tmp_path
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    for path in services.demo_files():  # what the first start did before there was a demo group
        services.document_upload(source=ContentFile(path.read_bytes(), name=path.name), filename=path.name)
    own = services.document_upload(source=ContentFile(b"# Own\n\nOur rules.\n", name="own.md"), filename="own.md")
    said = []
    assert services.demo_corpus_ensure(stdout=said.append) == 0  # documents exist: nothing is loaded
    assert "moved 5 demo documents into the demo access group" in said[0]
    assert Document.objects.demo().count() == 5 and not Document.objects.demo().filter(pk=own.document.pk).exists()
    # An admin takes one out of the demo group: a later start leaves that decision alone.
    kept = Document.objects.demo().first()
    services.document_set_access_groups(document=kept, groups=[])
    services.demo_corpus_ensure(stdout=said.append)
    assert Document.objects.demo().count() == 4 and len(said) == 1
