"""Documents in the JSON API: list, read, upload, delete, reindex (Knowledge admins; employees may list
and read the documents they are allowed to read)."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Field, File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from ingest import services
from ingest.models import Document, DocumentStatus
from kb.accounts.api_auth import for_roles
from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role, has_role
from kb.api_common import Text, responses

router = Router(tags=["documents"])


class OcrPageOut(Schema):
    page: int
    confidence: float | None
    chars: int
    problem: str  # why OCR could not read the page; empty when it did


class DocumentOut(Schema):
    id: int
    title: str
    filename: str
    media_type: str
    size: int
    version: int
    status: str
    searchable: bool
    error_code: str
    error_message: str
    chunks_total: int
    chunks_embedded: int
    # Pages read by OCR (scans, images), each with its confidence, or the reason it could not be read.
    ocr_pages: list[OcrPageOut]
    ocr_confidence: float | None
    access_groups: list[str]
    attached_to_id: int | None = Field(None, description="The e-mail this file was attached to, if any")
    created_at: datetime
    ready_at: datetime | None

    @staticmethod
    def resolve_access_groups(obj: Document) -> list[str]:
        return [group.name for group in obj.access_groups.all()]

    @staticmethod
    def resolve_attached_to_id(obj: Document, context) -> int | None:
        # Named only to whoever may read the mail: an id is a document's existence.
        if obj.attached_to_id is None:
            return None
        return obj.attached_to_id if _visible(context["request"]).filter(pk=obj.attached_to_id).exists() else None


class UploadOut(Schema):
    filename: str
    outcome: str
    message: str
    document_id: int | None


class ReindexOut(Schema):
    queued: bool
    message: str


def _require_admin(request) -> None:
    if not has_role(request.auth, Role.KNOWLEDGE_ADMIN):
        raise HttpError(403, "This needs the Knowledge admin role.")


def _visible(request):
    user = request.auth
    if has_role(user, Role.KNOWLEDGE_ADMIN):
        return Document.objects.current()
    if has_role(user, Role.EMPLOYEE):
        return Document.objects.searchable().readable_by(user)
    raise HttpError(403, "This needs the Employee or Knowledge admin role.")


@router.get(
    "",
    response=responses({200: list[DocumentOut]}),
    summary="Documents you may see (admins: every current one)",
    auth=for_roles(Role.EMPLOYEE, Role.KNOWLEDGE_ADMIN),
)
def list_documents(request, status: str | None = None):
    documents = _visible(request).prefetch_related("access_groups")
    if status:
        if status not in DocumentStatus.values:
            raise HttpError(422, f"Unknown status {status!r}; use one of: {', '.join(DocumentStatus.values)}.")
        documents = documents.filter(status=status)
    return list(documents[:1000])


@router.get(
    "/{document_id}", response=responses({200: DocumentOut}, 404), auth=for_roles(Role.EMPLOYEE, Role.KNOWLEDGE_ADMIN)
)
def get_document(request, document_id: int):
    return get_object_or_404(_visible(request), pk=document_id)


@router.post(
    "",
    response=responses({200: list[UploadOut]}, 400, 413),
    summary="Upload one or more files (each up to KB_MAX_UPLOAD_MB; 413 when every file is over it)",
    auth=for_roles(Role.KNOWLEDGE_ADMIN),
)
def upload_documents(
    request,
    files: list[UploadedFile] = File(...),  # noqa: B008 - ninja's declaration style
    title: Text | None = Form(None),  # noqa: B008
    access_groups: list[Text] = Form([]),  # noqa: B008
):
    _require_admin(request)
    groups = list(AccessGroup.objects.filter(name__in=access_groups))
    missing = set(access_groups) - {g.name for g in groups}
    if missing:
        raise HttpError(422, f"Unknown access groups: {', '.join(sorted(missing))}. Create them first.")
    results = []
    for name in getattr(request, "kb_oversized_files", []):
        results.append(
            UploadOut(filename=name, outcome="refused", message=services.too_large_message(name), document_id=None)
        )
    with services.processing_sent_together():
        for upload in files:
            result = services.document_upload(
                source=upload,
                filename=upload.name or "upload",
                uploaded_by=request.auth,
                title=title if len(files) == 1 else None,
                access_groups=groups or None,
            )
            results.append(
                UploadOut(
                    filename=upload.name or "upload",
                    outcome=result.outcome,
                    message=result.message,
                    document_id=result.document.pk if result.document else None,
                )
            )
    return results


@router.delete("/{document_id}", response=responses({204: None}, 404), auth=for_roles(Role.KNOWLEDGE_ADMIN))
def delete_document(request, document_id: int):
    _require_admin(request)
    services.document_delete(document=get_object_or_404(Document.objects.current(), pk=document_id))
    return Status(204, None)


@router.post(
    "/{document_id}/reindex", response=responses({200: ReindexOut}, 404, 409), auth=for_roles(Role.KNOWLEDGE_ADMIN)
)
def reindex_document(request, document_id: int):
    _require_admin(request)
    document = get_object_or_404(Document.objects.current(), pk=document_id)
    if services.document_reindex(document=document):
        return {"queued": True, "message": "Queued; the current index keeps answering until the new one is ready."}
    raise HttpError(409, f"The document is {document.status}; wait until it is ready or failed.")
