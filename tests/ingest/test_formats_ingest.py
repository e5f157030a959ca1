"""The new formats through the database: uploaded, parsed, embedded and indexed with the real model; e-mail
attachments as linked documents; which upload becomes a new version; upload messages people understand."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

from ingest import services
from ingest.models import Document, DocumentStatus
from tests.factories import AccessGroupFactory
from tests.ingest import fixtures_build as build
from tests.ingest.test_services import assert_index_consistent, ingest, upload

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("review.pptx", build.build_pptx, "Hotels capped at 180 euros"),
        ("budget.xlsx", build.build_xlsx, "London | 55 | 210 | 25%"),
        ("leave.csv", lambda: build.build_csv(30), "Person 29 | Finance"),
        ("cap.eml", build.build_eml, "hotel cap is 180 euros per night"),
    ],
)
def test_each_new_format_is_indexed_end_to_end(name, make, expected):
    document = ingest(make(), name)
    assert document.status == DocumentStatus.READY and document.searchable, document.error_message
    texts = list(document.chunks.values_list("text", flat=True))
    assert any(expected in text for text in texts)
    assert_index_consistent()


def test_a_slide_passage_carries_its_slide_number_as_its_page():
    document = ingest(build.build_pptx(), "review.pptx")
    table = document.chunks.get(text__contains="London | £55")
    assert (table.page_start, table.heading_path) == (3, ["Per diem by city"])
    assert document.page_count == 3 and document.title == "Quarterly Review"


def test_a_failed_new_version_of_a_workbook_leaves_the_old_one_serving(settings):
    old = ingest(build.build_xlsx(rows_per_sheet=3), "budget.xlsx")
    settings.KB_MAX_TABLE_ROWS = 50
    result = upload(build.build_xlsx(rows_per_sheet=200), "budget.xlsx")
    assert result.outcome == "new_version"
    services.document_process(result.document.pk)
    new = Document.objects.get(pk=result.document.pk)
    assert new.status == DocumentStatus.FAILED and new.error_code == "too_many_rows"
    assert "50" in new.error_message and new.error_message.endswith("Version 1 keeps answering.")
    old.refresh_from_db()
    assert old.status == DocumentStatus.READY and old.searchable and old.chunks.exists()


# --- e-mail attachments ------------------------------------------------------------------------------------------


def mail_with_attachments() -> bytes:
    return build.build_eml(
        attachments=[
            ("policy.pdf", build.policy_pdf(), "application/pdf"),
            ("leave.csv", build.build_csv(5), "text/csv"),
            ("setup.exe", build.elf_bytes(), "application/octet-stream"),
            ("broken.docx", build.build_docx()[:500], "application/octet-stream"),
        ]
    )


def test_a_mails_readable_attachments_become_documents_linked_to_it_with_its_readers():
    finance = AccessGroupFactory(name="Finance")
    mail = ingest(mail_with_attachments(), "cap.eml", access_groups=[finance])
    assert mail.status == DocumentStatus.READY
    attachments = {document.filename: document for document in mail.attachments.all()}
    # A program, and anything else the product cannot read, stays named in the mail only.
    assert set(attachments) == {"policy.pdf", "leave.csv", "broken.docx"}
    assert any("setup.exe" in text for text in mail.chunks.values_list("text", flat=True))
    for document in attachments.values():
        assert list(document.access_groups.all()) == [finance]
        assert document.version == 1 and document.replaces is None
        services.document_process(document.pk)
    states = {d.filename: d.status for d in Document.objects.filter(attached_to=mail)}
    assert states == {
        "policy.pdf": DocumentStatus.READY,
        "leave.csv": DocumentStatus.READY,
        "broken.docx": DocumentStatus.FAILED,  # its own failure; the mail and the others are unaffected
    }
    mail.refresh_from_db()
    assert mail.status == DocumentStatus.READY and mail.searchable


def test_reindexing_a_mail_does_not_duplicate_its_attachments():
    mail = ingest(mail_with_attachments(), "cap.eml")
    count = Document.objects.count()
    assert services.document_reindex(document=mail)
    services.document_process(mail.pk)
    assert Document.objects.count() == count


def test_an_attachment_is_never_the_next_version_of_another_document():
    other = ingest(build.build_csv(3), "leave.csv")
    mail = ingest(build.build_eml(attachments=[("leave.csv", build.build_csv(5), "text/csv")]), "cap.eml")
    attachment = mail.attachments.get()
    assert attachment.lineage != other.lineage and attachment.version == 1


def test_the_attachment_pages_link_the_mail_and_its_attachments(client, knowledge_admin):
    mail = ingest(mail_with_attachments(), "cap.eml")
    attachment = mail.attachments.get(filename="leave.csv")
    client.force_login(knowledge_admin)
    page = client.get(f"/documents/{mail.pk}/").content.decode()
    assert f'href="/documents/{attachment.pk}/"' in page and "leave.csv" in page
    page = client.get(f"/documents/{attachment.pk}/").content.decode()
    assert "Attached to" in page and f'href="/documents/{mail.pk}/"' in page


# --- which upload is a new version ---------------------------------------------------------------------------------

HANDBOOK_2024 = b"# Employee Handbook\n\nHolidays: 25 days a year.\n"
HANDBOOK_2025 = b"# Employee Handbook\n\nHolidays: 27 days a year.\n"


def test_a_file_named_as_the_documents_title_becomes_its_next_version():
    old = ingest(HANDBOOK_2024, "handbook-2024.md")
    assert old.title == "Employee Handbook"  # read from the file
    result = upload(HANDBOOK_2025, "Employee Handbook.md")
    assert result.outcome == "new_version"
    assert result.message == (
        "Employee Handbook.md is queued as version 2 of “Employee Handbook”; the current version keeps answering "
        "until it is ready."
    )
    assert (result.document.lineage, result.document.replaces) == (old.lineage, old)


def test_a_file_only_titled_inside_like_a_document_stays_its_own_and_its_page_says_how_to_replace(
    client, knowledge_admin
):
    # Two departments' "Employee Handbook" are two documents: the title inside a file does not make versions.
    old = ingest(HANDBOOK_2024, "handbook.md")
    result = upload(HANDBOOK_2025, "handbook-2025.md")
    assert result.outcome == "queued" and result.message == "handbook-2025.md is queued for processing."
    services.document_process(result.document.pk)
    new = Document.objects.get(pk=result.document.pk)
    assert new.title == old.title and new.lineage != old.lineage
    client.force_login(knowledge_admin)
    page = client.get(f"/documents/{new.pk}/").content.decode()
    assert "Also titled" in page and f'href="/documents/{old.pk}/"' in page and "Upload new version" in page
    # The older one's page names the newer one as well.
    assert f'href="/documents/{new.pk}/"' in client.get(f"/documents/{old.pk}/").content.decode()


def test_a_file_uploaded_with_replaces_is_the_next_version_whatever_its_name(db):
    old = ingest(HANDBOOK_2024, "handbook.md")
    result = upload(HANDBOOK_2025, "hb.md", replaces=old, title=old.title)
    assert result.outcome == "new_version" and result.document.lineage == old.lineage


# --- messages ------------------------------------------------------------------------------------------------------


def test_an_empty_file_says_it_is_empty_even_after_another_empty_upload():
    first = upload(b"", "empty.txt")
    second = upload(b"", "zero.docx")
    assert second.outcome == "failed" and second.document != first.document
    assert second.message.startswith("zero.docx: The file is empty")
    assert "identical" not in second.message


def test_a_duplicate_of_a_failed_file_leads_with_why_it_failed():
    data = build.build_xlsx()[:2000]
    failed = ingest_failed = upload(data, "budget.xlsx").document
    services.document_process(failed.pk)
    again = upload(data, "budget-copy.xlsx")
    assert again.outcome == "duplicate" and again.document == ingest_failed
    assert again.message.startswith("budget-copy.xlsx cannot be used: The Excel file is damaged")


@pytest.mark.parametrize(("count", "shown"), [(1, "1 passage"), (2, "2 passages")])
def test_passage_counts_are_pluralised(count, shown):
    document = Document(title="T", status=DocumentStatus.READY, chunks_total=count, size=1)
    html = render_to_string("ingest/_status.html", {"document": document})
    assert f">{shown}<" in html
    document.status = DocumentStatus.EMBEDDING
    document.chunks_embedded = 1
    html = render_to_string("ingest/_status.html", {"document": document})
    assert f"1 of {shown} embedded" in html


# --- tables shown as tables ----------------------------------------------------------------------------------------


def test_the_reader_search_results_and_document_page_show_a_sheet_as_tables(client, employee, knowledge_admin):
    document = ingest(build.build_csv(40), "leave.csv")
    client.force_login(employee)
    reader = client.get(f"/read/{document.pk}/").content.decode()
    assert reader.count("<table>") == document.chunks.count() >= 2  # every passage's rows under the header
    assert "<th>Employee</th><th>Department</th>" in reader and "<td>Person 39</td>" in reader
    assert "Person 39 | Finance" not in reader
    client.force_login(knowledge_admin)
    results = client.get("/search/", {"q": "Person 12 Sales leave", "mode": "bm25", "k": 3}).content.decode()
    assert "<th>Employee</th>" in results and "<td>Person 12</td>" in results
    page = client.get(f"/documents/{document.pk}/").content.decode()
    assert "<th>Employee</th>" in page


def test_the_api_lists_an_attachment_with_its_mail(client, knowledge_admin):
    mail = ingest(build.build_eml(attachments=[("leave.csv", build.build_csv(5), "text/csv")]), "cap.eml")
    attachment = mail.attachments.get()
    client.force_login(knowledge_admin)
    rows = {row["id"]: row for row in client.get("/api/v1/documents").json()}
    assert rows[attachment.pk]["attached_to_id"] == mail.pk and rows[mail.pk]["attached_to_id"] is None


def test_the_api_names_the_mail_only_to_whoever_may_read_it(client, employee):
    mail = ingest(build.build_eml(attachments=[("leave.csv", build.build_csv(5), "text/csv")]), "cap.eml")
    attachment = mail.attachments.get()
    services.document_process(attachment.pk)
    client.force_login(employee)
    response = client.get(f"/api/v1/documents/{attachment.pk}")
    assert response.status_code == 200, response.content
    assert response.json()["attached_to_id"] == mail.pk
    # The mail gone (an attachment uploaded again on its own stays): its id is no longer named.
    Document.objects.filter(pk=mail.pk).update(searchable=False)
    assert client.get(f"/api/v1/documents/{attachment.pk}").json()["attached_to_id"] is None
