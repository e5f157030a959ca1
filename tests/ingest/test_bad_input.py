"""Bad input: each file fails with a specific, readable reason, and nothing else is affected."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from ingest import services
from ingest.models import Document, DocumentStatus
from tests.ingest import fixtures_build as build
from tests.ingest.test_services import assert_index_consistent

pytestmark = pytest.mark.django_db

GOOD = b"# Parking\n\nThe Rotterdam office has 80 free parking spaces.\n"


@pytest.fixture
def existing(db):
    """A ready document that must stay untouched by every bad upload."""
    result = services.document_upload(source=ContentFile(GOOD, name="parking.md"), filename="parking.md")
    services.document_process(result.document.pk)
    return Document.objects.get(pk=result.document.pk)


def upload_and_process(data: bytes, name: str) -> Document | services.UploadResult:
    result = services.document_upload(source=ContentFile(data, name=name), filename=name)
    if result.document is None:
        return result
    services.document_process(result.document.pk)
    return Document.objects.get(pk=result.document.pk)


BAD_FILES = [
    ("empty.txt", lambda: b"", "empty"),
    ("blank.md", lambda: b"  \n\n \t\n", "empty"),
    (
        "corrupt.pdf",
        lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nendobj\n" + b"garbage" * 50,
        "corrupt_pdf",
    ),
    ("secret.pdf", lambda: build.encrypt_pdf(build.policy_pdf(), user_password="hunter2"), "encrypted_pdf"),
    ("scan.pdf", lambda: build.build_pdf([["ignored"]], image_only=True), "ocr_unreadable"),  # no legible text
    ("page.pdf", lambda: b"<!DOCTYPE html><html><body><p>Not a PDF at all.</p></body></html>", "mislabelled"),
    ("setup.pdf", build.elf_bytes, "mislabelled"),
    ("photo.png", build.png_bytes, "corrupt_image"),  # a PNG header and nothing after it
    ("photo.gif", lambda: b"GIF89a" + b"\x00" * 64, "unsupported_type"),  # images other than PNG/JPEG/TIFF
    ("bomb.docx", lambda: build.build_docx_bomb(300 * 1024 * 1024), "zip_bomb"),
    ("junk.txt", lambda: bytes(range(256)) * 40, "mislabelled"),  # binary data named .txt
    ("zero.docx", lambda: b"", "empty"),
    ("deck.pptx", lambda: build.build_pptx()[:3000], "corrupt_pptx"),
    ("bomb.pptx", lambda: build.build_pptx_bomb(300 * 1024 * 1024), "zip_bomb"),
    ("budget.xlsx", lambda: build.build_xlsx()[:2000], "corrupt_xlsx"),
    ("secret.xlsx", lambda: build.encrypt_office(build.build_xlsx(), "hunter2"), "encrypted_office"),
    ("huge.csv", lambda: build.build_csv(1_000_000), "too_many_rows"),
    ("broken.csv", lambda: b"a,b\n" + b'x,"' + b"y" * 200_000 + b'"\n', "corrupt_csv"),
]


@pytest.mark.parametrize(("name", "make", "code"), BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_bad_file_fails_with_a_specific_reason_and_nothing_else_is_affected(existing, name, make, code):
    document = upload_and_process(make(), name)
    assert isinstance(document, Document)
    assert document.status == DocumentStatus.FAILED
    assert document.error_code == code
    message = document.error_message
    assert message[:1].isupper() and message.rstrip().endswith(".") and len(message) > 20, message
    assert not document.chunks.exists()
    existing.refresh_from_db()
    assert existing.status == DocumentStatus.READY and existing.searchable
    assert existing.chunks.exists()
    assert_index_consistent()


def test_text_that_is_not_utf8_is_decoded_not_refused(existing):
    document = upload_and_process(build.cp1252_text(), "notes.txt")
    assert document.status == DocumentStatus.READY
    text = " ".join(document.chunks.values_list("text", flat=True))
    assert "Café au lait" in text and "5 €" in text


def test_a_file_over_the_limit_is_refused_before_it_is_stored(existing, settings):
    settings.KB_MAX_UPLOAD_BYTES = 10_000
    result = services.document_upload(source=ContentFile(b"x" * 10_001, name="big.txt"), filename="big.txt")
    assert result.outcome == "refused"
    assert "larger than" in result.message
    assert Document.objects.count() == 1
    media = settings.MEDIA_ROOT / "originals"
    stored = {p.name for p in media.rglob("*") if p.is_file()}
    assert existing.original.name.rsplit("/", 1)[-1] in stored
    assert not any(name.endswith(".txt") and "big" in name for name in stored)


def test_a_file_name_with_nothing_usable_is_refused(existing):
    result = services.document_upload(source=ContentFile(GOOD + b"1", name="x"), filename="../../\x00\x01")
    assert result.outcome == "refused"
    assert Document.objects.count() == 1


def test_a_thousand_files_in_one_upload(client, knowledge_admin, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    client.force_login(knowledge_admin)
    files = [SimpleUploadedFile(f"note-{i:04}.txt", f"Note {i}: the code is {i * 7}.".encode()) for i in range(1000)]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("document_upload"), {"files": files}, follow=True)
    assert response.status_code == 200
    assert "1000 files: 1000 queued, 0 new versions, 0 duplicates, 0 not accepted" in response.content.decode()
    assert Document.objects.filter(status=DocumentStatus.QUEUED).count() == 1000
    assert len(sent) == 1000


def test_a_thousand_files_in_one_ingest_call(tmp_path, monkeypatch, capsys):
    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    for i in range(1000):
        (tmp_path / f"memo-{i:04}.md").write_text(f"# Memo {i}\n\nRoom {i} is booked on day {i % 7}.\n")
    call_command("ingest", str(tmp_path))
    assert "1000 files: 0 ingested, 1000 queued, 0 duplicates, 0 failed" in capsys.readouterr().out
    assert Document.objects.count() == 1000
