"""Knowledge admin pages: upload, watch progress, inspect, replace, delete, reindex, set access."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from ingest import services
from ingest.forms import AccessForm, ReplaceForm, UploadForm
from ingest.models import Document, DocumentStatus
from kb.accounts.access import role_required
from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role

manage_documents = role_required(Role.KNOWLEDGE_ADMIN)


def plural(count: int, noun: str) -> str:
    """ "1 passage", "2 passages": a count with its noun (nouns here take an s)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _document_for_admin(request, document_id: int) -> Document:
    return get_object_or_404(Document.objects.exclude(status=DocumentStatus.DELETED), pk=document_id)


def _list_context(request) -> dict:
    documents = Document.objects.current().select_related("uploaded_by").prefetch_related("access_groups")
    status = request.GET.get("status", "")
    if status in DocumentStatus.values:
        documents = documents.filter(status=status)
    page = Paginator(documents, 50).get_page(request.GET.get("page"))
    return {
        "page": page,
        "status": status,
        "statuses": DocumentStatus.choices,
        "any_in_progress": any(d.is_in_progress for d in page.object_list),
    }


def _demo_context() -> dict:
    demo = Document.objects.current().demo().count()
    if not demo:
        return {"demo_count": 0}
    return {
        "demo_count": demo,
        "demo_group": AccessGroup.objects.filter(demo=True).values_list("name", flat=True).first(),
        "demo_hidden": Document.objects.searchable().own().exists(),
    }


@manage_documents
def document_list(request):
    context = _list_context(request)
    if request.htmx and request.GET.get("partial") == "rows":
        return render(request, "ingest/document_list.html#rows", context)
    context["form"] = UploadForm()
    context.update(_demo_context())
    return render(request, "ingest/document_list.html", context)


@manage_documents
@require_POST
def document_upload(request):
    form = UploadForm(request.POST, request.FILES)
    oversized = getattr(request, "kb_oversized_files", [])
    for name in oversized:
        messages.error(request, services.too_large_message(name))
    files = request.FILES.getlist("files")
    if not files and not oversized:
        messages.error(request, "Choose at least one file to upload.")
        return redirect("document_list")
    try:
        groups = form.fields["access_groups"].clean(request.POST.getlist("access_groups")) if files else []
    except ValidationError:
        messages.error(request, "Those access groups do not exist any more; reload the page and try again.")
        return redirect("document_list")
    counts = {"queued": 0, "new_version": 0, "duplicate": 0, "failed": 0, "refused": 0}
    with services.processing_sent_together():
        for upload in files:
            result = services.document_upload(
                source=upload, filename=upload.name, uploaded_by=request.user, access_groups=groups or None
            )
            counts[result.outcome] += 1
            if result.outcome in ("failed", "refused"):
                messages.error(request, result.message)
            elif result.outcome in ("duplicate", "new_version") or len(files) <= 10:
                messages.info(request, result.message)
    if len(files) > 10:
        messages.success(
            request,
            f"{len(files)} files: {counts['queued']} queued, {plural(counts['new_version'], 'new version')}, "
            f"{plural(counts['duplicate'], 'duplicate')}, {counts['failed'] + counts['refused']} not accepted.",
        )
    return redirect("document_list")


@manage_documents
def document_detail(request, document_id: int):
    document = _document_for_admin(request, document_id)
    if request.htmx and request.GET.get("partial") == "status":
        return render(request, "ingest/document_detail.html#status", {"document": document})
    chunks = Paginator(document.chunks.order_by("ordinal"), 20).get_page(request.GET.get("page"))
    versions = Document.objects.filter(lineage=document.lineage).order_by("-version")
    return render(
        request,
        "ingest/document_detail.html",
        {
            "document": document,
            "chunks": chunks,
            "versions": versions,
            "replace_form": ReplaceForm(),
            "access_form": AccessForm(initial={"access_groups": document.access_groups.all()}),
            "untrusted_count": document.chunks.filter(untrusted=True).count(),
            "attachments": document.attachments.exclude(status=DocumentStatus.DELETED).order_by("pk"),
            "namesakes": Document.objects.current().namesakes(document).order_by("pk")[:5],
        },
    )


@manage_documents
@require_POST
def document_replace(request, document_id: int):
    document = _document_for_admin(request, document_id)
    for name in getattr(request, "kb_oversized_files", []):
        messages.error(request, services.too_large_message(name))
    upload = request.FILES.get("file")
    if upload is None:
        if not getattr(request, "kb_oversized_files", []):
            messages.error(request, "Choose the file with the new version.")
        return redirect("document_detail", document_id=document.pk)
    result = services.document_upload(
        source=upload, filename=upload.name, uploaded_by=request.user, title=document.title, replaces=document
    )
    (messages.error if result.outcome in ("failed", "refused") else messages.info)(request, result.message)
    target = result.document.pk if result.document is not None else document.pk
    return redirect("document_detail", document_id=target)


@manage_documents
@require_POST
def document_delete(request, document_id: int):
    document = _document_for_admin(request, document_id)
    services.document_delete(document=document)
    messages.success(request, f"“{document.title}” (version {document.version}) was deleted.")
    return redirect("document_list")


@manage_documents
@require_POST
def documents_demo_remove(request):
    count = services.demo_corpus_remove()
    if count:
        messages.success(
            request,
            f"The demo documents were deleted ({plural(count, 'version')}); manage.py demo --load loads them again.",
        )
    else:
        messages.info(request, "There were no demo documents left to delete.")
    return redirect("document_list")


@manage_documents
@require_POST
def document_reindex(request, document_id: int):
    document = _document_for_admin(request, document_id)
    if services.document_reindex(document=document):
        messages.info(request, f"“{document.title}” is queued for reindexing; its current index keeps answering.")
    else:
        messages.error(
            request, f"“{document.title}” cannot be reindexed while it is {document.get_status_display().lower()}."
        )
    return redirect("document_detail", document_id=document.pk)


@manage_documents
@require_POST
def documents_reindex_all(request):
    count = services.documents_reindex()
    queued = f"{plural(count, 'document')} {'is' if count == 1 else 'are'} queued for reindexing"
    messages.info(request, f"{queued}; {'its' if count == 1 else 'their'} current index keeps answering.")
    return redirect("document_list")


@manage_documents
@require_POST
def document_access(request, document_id: int):
    document = _document_for_admin(request, document_id)
    form = AccessForm(request.POST)
    if form.is_valid():
        services.document_set_access_groups(document=document, groups=form.cleaned_data["access_groups"])
        names = ", ".join(g.name for g in form.cleaned_data["access_groups"]) or "every employee"
        messages.success(request, f"“{document.title}” can now be read by: {names}.")
    else:
        messages.error(request, "Those access groups do not exist any more; reload the page and try again.")
    return redirect("document_detail", document_id=document.pk)
