"""The knowledge admin pages: every view checks the role; uploads report each file's fate."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ingest import services
from ingest.models import Document, DocumentStatus
from kb.audit.models import AuditEvent, AuditKind
from tests.factories import AccessGroupFactory

pytestmark = pytest.mark.django_db

MD = b"# Guide\n\nThe service desk answers on extension 4040.\n"


def md(name="guide.md", data=MD):
    return SimpleUploadedFile(name, data, content_type="text/markdown")


@pytest.fixture
def document(db):
    result = services.document_upload(source=md(), filename="guide.md")
    services.document_process(result.document.pk)
    return Document.objects.get(pk=result.document.pk)


def _pages(document):
    return [
        ("get", reverse("document_list")),
        ("get", reverse("document_detail", args=[document.pk])),
        ("post", reverse("document_upload")),
        ("post", reverse("document_replace", args=[document.pk])),
        ("post", reverse("document_delete", args=[document.pk])),
        ("post", reverse("document_reindex", args=[document.pk])),
        ("post", reverse("documents_reindex_all")),
        ("post", reverse("document_access", args=[document.pk])),
        ("post", reverse("documents_demo_remove")),
    ]


@pytest.mark.parametrize("who", ["employee", "compliance"])
def test_other_roles_get_403_on_every_document_page(client, request, document, who):
    client.force_login(request.getfixturevalue(who))
    for method, url in _pages(document):
        assert getattr(client, method)(url).status_code == 403, url
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY


def test_anonymous_users_are_sent_to_login_from_every_document_page(client, document):
    for method, url in _pages(document):
        response = getattr(client, method)(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url


def test_upload_several_files_reports_each(client, knowledge_admin, django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    client.force_login(knowledge_admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("document_upload"),
            {"files": [md(), md("notes.txt", b"Plain notes about parking."), md("tool.pdf", b"\x7fELF\x02\x01\x01")]},
            follow=True,
        )
    body = response.content.decode()
    assert "guide.md is queued for processing" in body
    assert "notes.txt is queued for processing" in body
    assert "tool.pdf" in body and "executable" in body.lower()
    failed = Document.objects.get(filename="tool.pdf")
    assert failed.status == DocumentStatus.FAILED
    assert len(sent) == 2  # the failed file is not sent to the worker
    assert Document.objects.get(filename="guide.md").uploaded_by == knowledge_admin


def test_upload_with_no_file_says_what_to_do(client, knowledge_admin):
    client.force_login(knowledge_admin)
    response = client.post(reverse("document_upload"), {}, follow=True)
    assert "Choose at least one file" in response.content.decode()


def test_an_oversized_file_is_refused_before_it_is_stored(client, knowledge_admin, settings):
    settings.KB_MAX_UPLOAD_BYTES = 1024
    client.force_login(knowledge_admin)
    response = client.post(reverse("document_upload"), {"files": [md("big.txt", b"x" * 5000)]}, follow=True)
    assert "big.txt is larger than the 0 MB limit" in response.content.decode() or "larger than" in (
        response.content.decode()
    )
    assert not Document.objects.exists()


def test_a_dangerous_file_name_is_made_safe(client, knowledge_admin):
    client.force_login(knowledge_admin)
    client.post(reverse("document_upload"), {"files": [md("..%2F..%2Fetc%2Fpasswd.md")]})
    client.post(reverse("document_upload"), {"files": [SimpleUploadedFile("a\x07b.md", MD + b"2")]})
    names = set(Document.objects.values_list("filename", flat=True))
    assert all("/" not in n and "\\" not in n and not n.startswith(".") and "\x07" not in n for n in names), names
    for document in Document.objects.all():
        assert document.original.name.startswith("originals/")
        assert document.sha256 in document.original.name


def test_path_separators_in_a_file_name_never_reach_the_disk(db):
    result = services.document_upload(source=md(), filename="../../etc/passwd.md")
    assert result.document.filename == "passwd.md"
    assert result.document.original.name.startswith("originals/")
    result = services.document_upload(source=md(data=MD + b"!"), filename="..\\..\\boot.ini.md")
    assert result.document.filename == "boot.ini.md"


def test_the_list_shows_status_and_polls_only_while_work_is_in_progress(client, knowledge_admin, document):
    client.force_login(knowledge_admin)
    body = client.get(reverse("document_list")).content.decode()
    assert "Guide" in body and "Ready" in body
    assert "every 2s" not in body
    services.document_reindex(document=document)
    body = client.get(reverse("document_list")).content.decode()
    assert 'hx-trigger="every 2s"' in body
    rows = client.get(reverse("document_list") + "?partial=rows", headers={"HX-Request": "true"})
    assert rows.content.decode().lstrip().startswith("<tbody")
    assert "waiting for a worker" in rows.content.decode()


def test_the_detail_page_previews_chunks_with_headings(client, knowledge_admin, document):
    client.force_login(knowledge_admin)
    body = client.get(reverse("document_detail", args=[document.pk])).content.decode()
    assert "extension 4040" in body
    assert "Guide" in body
    assert document.sha256 in body


def test_document_text_is_escaped_on_the_detail_page(client, knowledge_admin):
    result = services.document_upload(
        source=md("x.txt", b"Notes\n\n<script>alert(1)</script> text <b>bold</b>\n"), filename="x.txt"
    )
    services.document_process(result.document.pk)
    client.force_login(knowledge_admin)
    body = client.get(reverse("document_detail", args=[result.document.pk])).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body


def test_replace_delete_reindex_and_access_groups(client, knowledge_admin, document, monkeypatch):
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    client.force_login(knowledge_admin)
    finance = AccessGroupFactory(name="Finance")
    client.post(reverse("document_access", args=[document.pk]), {"access_groups": [finance.pk]})
    assert list(document.access_groups.all()) == [finance]

    response = client.post(
        reverse("document_replace", args=[document.pk]), {"file": md("guide-v2.md", MD + b"\nNew line.\n")}
    )
    new = Document.objects.get(version=2)
    assert response["Location"] == reverse("document_detail", args=[new.pk])
    assert new.title == document.title and list(new.access_groups.all()) == [finance]

    client.post(reverse("document_reindex", args=[document.pk]))
    document.refresh_from_db()
    assert document.status == DocumentStatus.QUEUED

    client.post(reverse("document_delete", args=[new.pk]))
    new.refresh_from_db()
    assert new.status == DocumentStatus.DELETED
    assert client.get(reverse("document_detail", args=[new.pk])).status_code == 404


def test_an_unknown_access_group_in_an_upload_is_a_message_not_an_error(client, knowledge_admin):
    client.force_login(knowledge_admin)
    response = client.post(reverse("document_upload"), {"files": [md()], "access_groups": ["999999"]}, follow=True)
    assert response.status_code == 200
    assert "do not exist any more" in response.content.decode()
    assert not Document.objects.exists()


def test_a_knowledge_admin_deletes_the_demo_documents_in_one_click(client, knowledge_admin, loaded_demo, document):
    client.force_login(knowledge_admin)
    page = client.get(reverse("document_list")).content.decode()
    # The company's guide is ready, so the page says the demo documents no longer answer.
    assert "5 documents of a fictional company" in page and "no longer answer questions" in page
    assert f'action="{reverse("documents_demo_remove")}"' in page
    response = client.post(reverse("documents_demo_remove"), follow=True)
    assert "The demo documents were deleted (5 versions)" in response.content.decode()
    assert not Document.objects.current().demo().exists()
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY
    deletions = AuditEvent.objects.filter(kind=AuditKind.DOCUMENT_DELETE)
    assert deletions.count() == 5 and {event.actor_id for event in deletions} == {knowledge_admin.pk}
    assert "Demo documents" not in client.get(reverse("document_list")).content.decode()


def test_before_the_first_own_document_the_page_says_the_demo_documents_answer(client, knowledge_admin, loaded_demo):
    client.force_login(knowledge_admin)
    page = client.get(reverse("document_list")).content.decode()
    assert "until the first of your own documents is ready" in page


@pytest.mark.parametrize("who", ["employee", "compliance"])
def test_other_roles_cannot_delete_the_demo_documents(client, request, loaded_demo, who):
    client.force_login(request.getfixturevalue(who))
    assert client.post(reverse("documents_demo_remove")).status_code == 403
    assert Document.objects.current().demo().count() == 5


def test_deleting_the_demo_documents_needs_a_post_with_the_csrf_token(knowledge_admin, loaded_demo):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(knowledge_admin)
    assert client.get(reverse("documents_demo_remove")).status_code == 405
    assert client.post(reverse("documents_demo_remove")).status_code == 403
    assert Document.objects.current().demo().count() == 5
