"""Document uploads, replacements, deletions, reindexes and reader changes are audited, naming who did them."""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.urls import reverse

from ingest import services as ingest
from ingest.models import Document
from kb.audit.models import AuditEvent, AuditKind
from tests.factories import AccessGroupFactory


def upload(text: str, name: str, **kwargs) -> Document:
    result = ingest.document_upload(source=ContentFile(text.encode(), name=name), filename=name, **kwargs)
    assert result.accepted, result.message
    assert result.document is not None
    return result.document


def only(kind: str, **lookups) -> AuditEvent:
    (event,) = AuditEvent.objects.filter(kind=kind, **lookups)
    return event


def test_an_upload_and_a_new_version_are_recorded_with_the_uploader(empty_log, knowledge_admin):
    hr = AccessGroupFactory(name="HR")
    first = upload("# Travel\n\nTrains.", "travel.md", uploaded_by=knowledge_admin, access_groups=[hr])
    second = upload("# Travel\n\nTrains and planes.", "travel.md", uploaded_by=knowledge_admin)
    created = only(AuditKind.DOCUMENT_UPLOAD)
    assert created.actor_id == knowledge_admin.pk and created.document_ids == [first.pk]
    assert created.data["sha256"] == first.sha256 and created.data["version"] == 1
    assert created.data["access_groups"] == ["HR"] and created.data["status"] == "queued"
    replaced = only(AuditKind.DOCUMENT_REPLACE)
    assert replaced.data["replaces_id"] == first.pk and replaced.data["version"] == 2
    assert replaced.document_ids == sorted([first.pk, second.pk])
    assert replaced.data["access_groups"] == ["HR"]  # a new version keeps its readers


def test_a_duplicate_upload_changes_nothing_and_records_nothing(empty_log, knowledge_admin):
    upload("# Same\n\nBytes.", "same.md", uploaded_by=knowledge_admin)
    result = ingest.document_upload(source=ContentFile(b"# Same\n\nBytes.", name="copy.md"), filename="copy.md")
    assert result.outcome == "duplicate"
    assert AuditEvent.objects.count() == 1


def test_deleting_reindexing_and_changing_readers_through_the_pages_name_the_admin(empty_log, client, knowledge_admin):
    document = upload("# Leave\n\nSixteen weeks.", "leave.md")
    ingest.document_process(document.pk)
    hr = AccessGroupFactory(name="HR")
    client.force_login(knowledge_admin)
    client.post(reverse("document_access", args=[document.pk]), {"access_groups": [hr.pk]})
    client.post(reverse("document_reindex", args=[document.pk]))
    client.post(reverse("document_delete", args=[document.pk]))

    uploaded = only(AuditKind.DOCUMENT_UPLOAD)
    assert uploaded.actor_id is None and uploaded.actor_label == "system"  # not uploaded in a request
    readers = only(AuditKind.ACCESS_GROUPS)
    assert readers.actor_username == knowledge_admin.username
    assert readers.data["before"] == [] and readers.data["after"] == ["HR"] and readers.document_ids == [document.pk]
    reindexed = only(AuditKind.DOCUMENT_REINDEX)
    assert reindexed.actor_username == knowledge_admin.username and reindexed.document_ids == [document.pk]
    deleted = only(AuditKind.DOCUMENT_DELETE)
    assert deleted.actor_username == knowledge_admin.username and deleted.data["title"] == "Leave"
    assert [e.kind for e in AuditEvent.objects.order_by("seq")] == [
        AuditKind.DOCUMENT_UPLOAD,
        AuditKind.ACCESS_GROUPS,
        AuditKind.DOCUMENT_REINDEX,
        AuditKind.DOCUMENT_DELETE,
    ]


def test_the_api_records_the_token_holder(empty_log, client, knowledge_admin):
    from kb.accounts.services import api_token_create

    _, raw = api_token_create(user=knowledge_admin)
    document = upload("# Badge\n\nWear it.", "badge.md")
    response = client.delete(f"/api/v1/documents/{document.pk}", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 204
    assert only(AuditKind.DOCUMENT_DELETE).actor_username == knowledge_admin.username


def test_a_reindex_that_is_refused_records_nothing(empty_log):
    document = upload("# Queued\n\nStill queued.", "queued.md")
    assert not ingest.document_reindex(document=document)  # queued documents cannot be reindexed
    assert not AuditEvent.objects.filter(kind=AuditKind.DOCUMENT_REINDEX).exists()
