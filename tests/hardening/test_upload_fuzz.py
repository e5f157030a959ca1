"""Malformed files through the whole upload path: the upload service and the processing task (run here and
now, no worker), the JSON API and the admin's upload page, with any file name and declared content type.

Every file ends one of three ways: refused with a clear message, a failed document with a readable reason,
or a ready document with passages. Never an unhandled exception or a 500, never a traceback or an exception
class name in a message, and the document already in the knowledge base is untouched.
"""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import services
from ingest.models import Document, DocumentStatus
from ingest.tasks import process_document
from kb.accounts.roles import Role
from kb.accounts.services import api_token_create
from tests.factories import UserFactory
from tests.ingest import fixtures_build as build
from tests.ingest.test_parsers import mutated
from tests.ingest.test_services import assert_index_consistent

pytestmark = pytest.mark.django_db

OUTCOMES = {"queued", "new_version", "duplicate", "failed", "refused"}
# What a person must never be shown: a traceback, a source location, an exception's class name or repr.
UNREADABLE = re.compile(r"Traceback|File \"|line \d+, in |\b[A-Z]\w*(Error|Exception)\b|\w+Error\(|<[a-z_.]+ object at")


def _docx_with_text() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Hotels", level=1)
    document.add_paragraph("The hotel limit is 180 euros per night in Amsterdam.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


VALID = [
    build.policy_pdf(),
    build.build_pdf([["Parking", "", "The Rotterdam office has 80 free parking spaces."]], title="Parking"),
    build.build_docx(),
    _docx_with_text(),
    build.build_html(),
    build.build_markdown(),
    build.cp1252_text(),
    "Plain text: the canteen opens at eight.\n".encode("utf-16"),
]
EXTENSIONS = ["pdf", "docx", "html", "htm", "md", "markdown", "txt", "doc", "png", "exe", "", "PDF", "tar.gz"]
CONTENT_TYPES = [
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "text/html",
    "text/markdown",
    "text/plain",
    "application/octet-stream",
    "image/png",
    "application/x-msdownload",
]


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A small valid file with a few bytes flipped, cut, deleted or inserted."""
    return mutated(draw, draw(st.sampled_from(VALID)), min_edits=0)


FILES = damaged() | st.binary(max_size=600) | st.text(max_size=300).map(str.encode)
NAMES = st.one_of(
    st.tuples(st.text(max_size=30), st.sampled_from(EXTENSIONS)).map(lambda parts: ".".join(parts)),
    st.text(max_size=60),
    st.sampled_from(["../../etc/passwd", "CON.txt", ".hidden.md", "a" * 300 + ".pdf", "report\u202efdp.exe", ""]),
)
# What a browser or client declares; the app reads the type from the bytes, whatever is declared.
DECLARED = st.sampled_from(CONTENT_TYPES) | st.from_regex(r"[a-z]{1,12}/[a-z0-9.+-]{1,30}", fullmatch=True)
UPLOADS = st.lists(st.tuples(FILES, NAMES, DECLARED), min_size=1, max_size=3)


def multipart(files: list[tuple[bytes, str, str]], **fields: str) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it, with any file name (Django's test client refuses
    some, such as an empty one): quotes and line breaks in names are percent-encoded, as browsers do."""
    boundary = "----kbFuzzBoundary7MA4YWxkTrZu0gW"
    parts = []
    for data, name, declared in files:
        quoted = name.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
        head = f'Content-Disposition: form-data; name="files"; filename="{quoted}"\r\nContent-Type: {declared}\r\n'
        parts.append(head.encode("utf-8", "surrogatepass") + b"\r\n" + data)
    for key, value in fields.items():
        head = f'Content-Disposition: form-data; name="{key}"\r\n\r\n{value}'
        parts.append(head.encode("utf-8", "surrogatepass"))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def assert_readable(message: str) -> None:
    assert message and message.strip(), "an empty message"
    assert not UNREADABLE.search(message), message


@pytest.fixture
def ingesting(settings, monkeypatch):
    """Processing runs here, through the task's own function; nothing is sent to a broker."""
    settings.KB_MODELS = ["extractive"]
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)


@pytest.fixture
def bystander(ingesting):
    """A ready document that no upload may change."""
    from tests.search.conftest import ingest_file

    document = ingest_file("# Parking\n\nThe Rotterdam office has 80 free parking spaces.\n", "parking.md")
    return document, _snapshot(document)


def _snapshot(document: Document) -> tuple:
    document.refresh_from_db()
    chunks = list(document.chunks.order_by("ordinal").values_list("id", "text"))
    return (document.status, document.searchable, document.version, document.title, chunks)


def _process_and_check(document_id: int) -> Document:
    """Run the processing task on an accepted upload and check where the document ended."""
    process_document(document_id)
    document = Document.objects.get(pk=document_id)
    _check_settled(document)
    return document


def _check_settled(document: Document) -> None:
    assert document.status in (DocumentStatus.READY, DocumentStatus.FAILED), document.status
    if document.status == DocumentStatus.FAILED:
        # internal_error is the task's last resort for an exception nobody handled: a bug, not a bad file.
        assert document.error_code and document.error_code != "internal_error", document.error_code
        assert_readable(document.error_message)
        assert not document.chunks.exists()
    else:
        assert document.searchable
        assert document.chunks.count() == document.chunks_total > 0


def _check_result(result_outcome: str, message: str, document_id: int | None) -> None:
    assert result_outcome in OUTCOMES, result_outcome
    assert_readable(message)
    if result_outcome in ("queued", "new_version"):
        _process_and_check(document_id)
    elif result_outcome == "failed":
        document = Document.objects.get(pk=document_id)
        assert document.status == DocumentStatus.FAILED
        _check_settled(document)
    elif result_outcome == "duplicate":
        assert document_id is not None
    else:
        assert document_id is None


def _check_untouched(bystander) -> None:
    document, before = bystander
    assert _snapshot(document) == before


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=FILES, name=NAMES)
def test_service_and_task_refuse_fail_or_index_any_file(bystander, data, name):
    result = services.document_upload(source=ContentFile(data, name="upload"), filename=name)
    _check_result(result.outcome, result.message, result.document.pk if result.document else None)
    _check_untouched(bystander)


@FUZZ
@given(files=UPLOADS, title=st.none() | st.text(max_size=40))
def test_the_api_upload_answers_every_file_clearly(client, bystander, files, title):
    admin = UserFactory(roles=[Role.KNOWLEDGE_ADMIN])
    headers = {"Authorization": f"Bearer {api_token_create(user=admin)[1]}"}
    body, content_type = multipart(files, **({"title": title} if title is not None else {}))
    response = client.post("/api/v1/documents", body, content_type=content_type, headers=headers)
    assert response.status_code in (200, 422), (response.status_code, response.content[:500])
    if response.status_code == 422:
        # A title with a NUL character, or a file part without a file name (a browser sends none such).
        assert response.json()["detail"]
    else:
        for row in response.json():
            _check_result(row["outcome"], row["message"], row["document_id"])
    _check_untouched(bystander)
    assert_index_consistent()


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(files=UPLOADS)
def test_the_upload_page_answers_every_file_clearly(client, bystander, files):
    admin = UserFactory(roles=[Role.KNOWLEDGE_ADMIN])
    client.force_login(admin)
    before = set(Document.objects.values_list("pk", flat=True))
    body, content_type = multipart(files)
    response = client.post(reverse("document_upload"), body, content_type=content_type)
    assert response.status_code == 302, (response.status_code, response.content[:500])
    shown = [str(message) for message in get_messages(response.wsgi_request)]
    assert shown
    for message in shown:
        assert_readable(message)
    for document in Document.objects.exclude(pk__in=before):
        if document.status == DocumentStatus.QUEUED:
            _process_and_check(document.pk)
        else:
            _check_settled(document)
    _check_untouched(bystander)
