"""Writes for documents: upload, process (parse -> chunk -> embed -> index), versions, delete, reindex.

Chunks, vectors and keyword postings of a version are written in one transaction at the end of
processing, together with the status change to ready and the retirement of the version it replaces:
until that commit the previous version answers, and afterwards only the new one does.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from ingest.chunker import ChunkDraft, chunk_document
from ingest.filenames import UnsafeFilename, safe_filename
from ingest.models import IN_PROGRESS, TRANSITIONS, Chunk, Document, DocumentStatus
from ingest.parsers import Attachment, ParseError, parse, sniff_media_type
from ingest.parsers.common import IMAGE_MEDIA_TYPES, is_empty
from ingest.parsers.ocr import ocr_progress, ocr_report_of
from kb.audit.models import AuditKind
from kb.audit.services import access_groups_audit, document_audit, document_upload_audit
from kb.search import embeddings
from kb.search.analyzer import analyze
from kb.search.indexing import index_apply, index_version_bump

logger = logging.getLogger(__name__)

# Documents given up on after this many processing attempts (crashes, lost workers), to stop a loop.
MAX_ATTEMPTS = 5
DEMO_DIR = Path(__file__).resolve().parent / "demo"


class IllegalTransition(Exception):
    pass


class DocumentGone(Exception):
    """The document was deleted (or retired) while it was being processed."""


@dataclass(frozen=True)
class UploadResult:
    outcome: str  # "queued" | "new_version" | "duplicate" | "failed" | "refused"
    message: str
    document: Document | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome in {"queued", "new_version"}


# --- upload ---------------------------------------------------------------------------------------


def _lock_lineage(lineage) -> None:
    """Serialise every change to one document's versions (new version, go-live, readers) until commit.

    Row locks are not enough: a version that becomes searchable in another transaction is invisible to a
    query that started before it, so two versions could both go live. One advisory lock per lineage, taken
    before reading the versions, closes that gap.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [str(lineage)])


def parse_upload(data: bytes, media_type: str):
    """The file parsed into its structured form, within the zip-bomb limits; ParseError says what is wrong."""
    return parse(
        data,
        media_type,
        max_uncompressed_bytes=settings.KB_MAX_UNCOMPRESSED_BYTES,
        max_compression_ratio=settings.KB_MAX_COMPRESSION_RATIO,
        max_table_rows=settings.KB_MAX_TABLE_ROWS,
        max_email_attachments=settings.KB_MAX_EMAIL_ATTACHMENTS,
    )


def chunks_of(parsed) -> list[ChunkDraft]:
    """The parsed document's passages at the configured sizes."""
    return chunk_document(
        parsed,
        target_tokens=settings.KB_CHUNK_TARGET_TOKENS,
        max_tokens=settings.KB_CHUNK_MAX_TOKENS,
        overlap_tokens=settings.KB_CHUNK_OVERLAP_TOKENS,
    )


def title_from_filename(filename: str) -> str:
    stem = Path(filename).stem
    return " ".join(stem.replace("_", " ").replace("-", " ").split()) or filename


def _hash_and_size(source: File) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    source.seek(0)
    for block in source.chunks():
        digest.update(block)
        size += len(block)
    source.seek(0)
    return digest.hexdigest(), size


# What is read of an upload to tell its type (zip local headers, mail headers, the PDF marker all come early).
SNIFF_HEAD_BYTES = 64 * 1024


def _head(source: File, length: int = SNIFF_HEAD_BYTES) -> bytes:
    source.seek(0)
    data = source.read(length)
    source.seek(0)
    return data


def document_upload(
    *,
    source: File,
    filename: str,
    uploaded_by=None,
    title: str | None = None,
    access_groups: Iterable | None = None,
    replaces: Document | None = None,
    attached_to: Document | None = None,
) -> UploadResult:
    """Store an uploaded file as a new document (or a new version) and queue it for processing.

    Identical bytes are recognised as a duplicate and cause no work. A file uploaded with `replaces`, or whose file
    name or upload title (given, else read from the file name) matches a current document's, becomes that
    document's next version: decided here, so the upload's message says it. The title inside the file (its first
    heading) does not decide, since two departments' "Expenses policy" are two documents; the document page
    names its namesakes and says how to make it one's next version instead. An e-mail's attachment
    (`attached_to`) is never another document's version.
    """
    try:
        name = safe_filename(filename)
    except UnsafeFilename as exc:
        return UploadResult("refused", f"{filename!r}: {exc}")
    size = source.size if source.size is not None else 0
    if size > settings.KB_MAX_UPLOAD_BYTES:
        return UploadResult("refused", too_large_message(name))
    sha256, size = _hash_and_size(source)
    if size > settings.KB_MAX_UPLOAD_BYTES:
        return UploadResult("refused", too_large_message(name))

    # Empty files are all "identical"; each is simply empty, whatever was uploaded before.
    empty = size == 0 or is_empty(_head(source))
    duplicate = None if empty else Document.objects.current().filter(sha256=sha256).order_by("created_at").first()
    if duplicate is not None and duplicate.status == DocumentStatus.FAILED:
        return UploadResult(
            "duplicate",
            f"{name} cannot be used: {duplicate.error_message} (The same file was uploaded before as "
            f"“{duplicate.title}”; nothing was changed.)",
            duplicate,
        )
    if duplicate is not None:
        return UploadResult(
            "duplicate",
            f"{name} is identical to “{duplicate.title}” (version {duplicate.version}); nothing was changed.",
            duplicate,
        )

    auto_title = not (title or "").strip()
    title = (title or "").strip() or title_from_filename(name)
    if replaces is None and attached_to is None:
        # Same title, or same file name: the next version of that document.
        candidates = Document.objects.current()
        if not any(getattr(group, "demo", False) for group in access_groups or ()):
            # The company's "Travel and Expenses Policy" is its own document, not the demo company's next version.
            candidates = candidates.own()
        replaces = (
            candidates
            # A failed first upload is no version to follow; a failed reindex still serves and is.
            .exclude(status=DocumentStatus.FAILED, searchable=False)
            .filter(Q(title__iexact=title) | Q(filename=name))
            .order_by("-version")
            .first()
        )
    media_type, failure = "", None
    try:
        media_type = sniff_media_type(_head(source), name)
    except ParseError as exc:
        failure = exc

    try:
        with transaction.atomic():
            document = Document(
                title=(replaces.title if replaces is not None and auto_title else title)[:300],
                auto_title=auto_title and replaces is None,
                filename=name,
                sha256=sha256,
                size=size,
                media_type=media_type,
                uploaded_by=uploaded_by if getattr(uploaded_by, "pk", None) else None,
                attached_to=attached_to,
                # Residency follows the content: an attachment of a marked mail is marked; a new version keeps the
                # mark of the version it replaces (below).
                internal_models_only=bool(attached_to is not None and attached_to.internal_models_only),
            )
            if replaces is not None:
                _lock_lineage(replaces.lineage)
                replaces = Document.objects.get(pk=replaces.pk)
                document.lineage = replaces.lineage
                document.version = (
                    Document.objects.filter(lineage=replaces.lineage)
                    .order_by("-version")
                    .values_list("version", flat=True)[0]
                    + 1
                )
                document.replaces = replaces
                document.internal_models_only = document.internal_models_only or replaces.internal_models_only
            if failure is not None:
                document.status = DocumentStatus.FAILED
                document.error_code = failure.code
                document.error_message = failure.message
            _store_original(document, name, source)
            try:
                document.save()
                if access_groups is not None:
                    document.access_groups.set(access_groups)
                elif replaces is not None:
                    document.access_groups.set(replaces.access_groups.all())
                if failure is None:
                    transaction.on_commit(partial(enqueue_processing, document.id))
                document_upload_audit(document=document, actor=uploaded_by)
            except BaseException:
                # The row is rolled back: its file must go too.
                _remove_partial(document.original.storage, document.original.name)
                raise
    except _NotStored as exc:
        return UploadResult("refused", exc.message)

    if failure is not None:
        return UploadResult("failed", f"{name}: {failure.message}", document)
    if replaces is not None:
        return UploadResult(
            "new_version",
            f"{name} is queued as version {document.version} of “{replaces.title}”; "
            "the current version keeps answering until it is ready.",
            document,
        )
    return UploadResult("queued", f"{name} is queued for processing.", document)


class _NotStored(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _store_original(document: Document, name: str, source: File) -> None:
    """Store the upload under its content-addressed name plus a part of its own, so that a write that fails (a
    full disk) removes exactly what it wrote, never the file of another upload of the same bytes."""
    storage = document.original.storage
    base, ext = os.path.splitext(document.original.field.generate_filename(document, name))
    own = f"{base}-{uuid.uuid4().hex[:12]}{ext}"
    source.seek(0)
    try:
        document.original.name = storage.save(own, source)
    except OSError as exc:
        _remove_partial(storage, own)
        logger.error("upload of %s not stored: %s", name, exc.strerror or exc)
        reason = (
            "the server's disk is full"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else f"the server could not write it ({exc.strerror or exc})"
        )
        raise _NotStored(
            f"{name} was not stored: {reason}. Nothing was changed; try again later and tell your administrator."
        ) from None


def _remove_partial(storage, name: str) -> None:
    """A write that failed half-way leaves a partial file behind (Django's storage does not remove it)."""
    try:
        storage.delete(name)
    except OSError:
        logger.warning("could not remove the partial upload %s", name)


def too_large_message(name: str) -> str:
    limit = settings.KB_MAX_UPLOAD_BYTES // (1024 * 1024)
    return f"{name} is larger than the {limit} MB limit and was not stored; split it or compress its images."


# Inside `processing_sent_together`, the documents whose processing is to be sent (None outside it).
_sending_together: ContextVar[list[int] | None] = ContextVar("kb_ingest_sending_together", default=None)


@contextmanager
def processing_sent_together() -> Iterator[None]:
    """Uploads made inside (a folder, a multi-file upload) send their documents' processing together: the small
    ones in one message per KB_INGEST_BATCH_DOCUMENTS, the others each in their own, sent as each group fills and
    the rest at the end. One message per document would do the same work, but a worker takes a batch of queued
    documents per message, so all the others would find theirs taken, and each such message costs the worker a
    broker poll (about 25 ms: more than indexing a one-paragraph document)."""
    pending: list[int] = []
    token = _sending_together.set(pending)
    try:
        yield
    finally:
        _sending_together.reset(token)
        _send_together(pending)  # even after an error: what was committed must be sent


def enqueue_processing(document_id: int) -> bool:
    """Send the processing task, False when the broker is down (the document stays queued for the resumer);
    inside `processing_sent_together` it is sent with the others, soon, and this says True."""
    pending = _sending_together.get()
    if pending is not None:
        pending.append(document_id)
        if len(pending) >= settings.KB_INGEST_BATCH_DOCUMENTS:
            full, pending[:] = pending[:], []
            _send_together(full)
        return True
    return _send(document_id)


def _send(document_id: int) -> bool:
    from ingest.tasks import process_document

    try:
        process_document.delay(document_id)
    except Exception:  # the broker is down: the periodic resumer sends it again later
        logger.warning("could not enqueue document %s; it stays queued and will be retried", document_id, exc_info=True)
        return False
    return True


def _send_together(document_ids: Sequence[int]) -> None:
    """The batchable ones of `document_ids` in one message, each other one in its own."""
    from ingest.tasks import process_documents

    if not document_ids:
        return
    try:
        small = set(_batchable_ones(Document.objects.filter(pk__in=document_ids)).values_list("pk", flat=True))
    except DatabaseError:  # the database is down: each is sent on its own
        small = set()
    together = [pk for pk in document_ids if pk in small]
    for document_id in document_ids:
        if document_id not in small or len(together) == 1:
            _send(document_id)
    if len(together) > 1:
        try:
            process_documents.delay(together)
        except Exception:  # the broker is down: the periodic resumer sends them again later
            logger.warning(
                "could not enqueue documents %s; they stay queued and will be retried", together, exc_info=True
            )


# --- processing -----------------------------------------------------------------------------------


def _move(document_id: int, to: str, **changes) -> None:
    """Change status only along TRANSITIONS; returns silently when the row already moved elsewhere."""
    allowed_from = [state for state, targets in TRANSITIONS.items() if to in targets]
    updated = Document.objects.filter(pk=document_id, status__in=allowed_from).update(
        status=to, heartbeat_at=timezone.now(), **changes
    )
    if not updated:
        current = Document.objects.filter(pk=document_id).values_list("status", flat=True).first()
        if current in (DocumentStatus.DELETED, DocumentStatus.SUPERSEDED, None):
            raise DocumentGone(document_id)
        raise IllegalTransition(f"document {document_id}: {current} -> {to} is not allowed")


def document_fail(document_id: int, *, code: str, message: str) -> None:
    document = Document.objects.filter(pk=document_id).first()
    if document is None or document.status in (DocumentStatus.DELETED, DocumentStatus.SUPERSEDED):
        return
    if document.searchable:
        message += " The previously indexed content keeps answering."
    else:
        serving = Document.objects.filter(lineage=document.lineage, searchable=True).exclude(pk=document.pk).first()
        if serving is not None:
            message += f" Version {serving.version} keeps answering."
    try:
        _move(document_id, DocumentStatus.FAILED, error_code=code, error_message=message)
    except (IllegalTransition, DocumentGone):
        return
    logger.info("document %s failed: %s (%s)", document_id, code, message)


def passage_context(title: str, heading_path: Sequence[str]) -> str:
    """The document title and heading path, without repeating a title that is also the first heading."""
    parts = [title] if title else []
    for heading in heading_path:
        if not parts or heading.casefold() != parts[-1].casefold():
            parts.append(heading)
    return " › ".join(parts)


def indexed_text(title: str, draft_text: str, heading_path: Sequence[str]) -> str:
    """What is embedded and keyword-indexed: the passage with its place in the document."""
    return f"{passage_context(title, heading_path)}\n\n{draft_text}"


def document_process(document_id: int, *, batch: int = 1, mates: Sequence[int] = ()) -> None:
    """Parse, chunk, embed and index one document, and with it up to `batch - 1` other queued small documents
    (the worker passes KB_INGEST_BATCH_DOCUMENTS; of `mates` first, the documents sent with it): their passages
    are embedded in one call, which is where many small files lose their time. Idempotent: re-running it on a
    finished document does nothing, and on a half-finished one whose worker is gone starts over and writes the
    same chunks once.

    A document is claimed before it is worked on (moved to parsing in one locked transaction, `attempts` + 1);
    its heartbeat, renewed at every step, is the lease: a document in progress with a recent heartbeat belongs
    to a live worker and is left to it. A killed worker's documents go back to the queue when their lease
    runs out (`documents_resume_stalled`) and are claimed again, once.
    """
    claimed = _claim(document_id, batch, mates)
    if not claimed:
        return
    finished: set[int] = set()
    try:
        _process(claimed, finished)
    except DocumentGone:
        logger.info("the documents taken with %s were deleted while being processed; work dropped", document_id)
    except (OperationalError, InterfaceError):
        # Transient: the task retries the first document, which must then find itself claimable; the others
        # it took go back to the queue, each to be processed on its own.
        if claimed[0].pk not in finished:
            documents_requeue([claimed[0].pk], send=False)
        documents_requeue([document.pk for document in claimed[1:] if document.pk not in finished])
        raise
    except BaseException:
        # The first document's failure is the task's to report; the others go back to the queue.
        documents_requeue([document.pk for document in claimed[1:] if document.pk not in finished])
        raise


def _claim(document_id: int, batch: int, mates: Sequence[int] = ()) -> list[Document]:
    """`document_id` and up to `batch - 1` queued small documents (of `mates` first, then the oldest), moved to
    parsing together; [] when the document is finished, gone, or in progress under a live lease. Other workers'
    claims are skipped, not waited for (SKIP LOCKED), so two workers never take the same document."""
    now = timezone.now()
    lease_start = now - timedelta(seconds=settings.KB_INGEST_STALL_SECONDS)

    def taken(status: str, heartbeat_at) -> bool:  # finished, gone, or another worker's under a live lease
        return status not in IN_PROGRESS or (status != DocumentStatus.QUEUED and (heartbeat_at or now) > lease_start)

    # Most messages of small documents find theirs already taken into another's batch: a plain read says so
    # without a locking transaction (and its commit); the locked read below decides for the rest.
    seen = Document.objects.filter(pk=document_id).values_list("status", "heartbeat_at").first()
    if seen is None or taken(*seen):
        return []
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=document_id).first()
        if document is None or taken(document.status, document.heartbeat_at):
            return []
        if document.attempts >= MAX_ATTEMPTS:
            document_fail(
                document_id,
                code="gave_up",
                message=f"Processing was interrupted {document.attempts} times; try Reindex, or split the file.",
            )
            return []
        claimed = [document]
        if batch > 1 and _batchable(document):
            queued = _batchable_ones(
                Document.objects.select_for_update(skip_locked=True).filter(
                    status=DocumentStatus.QUEUED, attempts__lt=MAX_ATTEMPTS
                )
            ).order_by("id")
            if mates:
                claimed += list(queued.filter(pk__in=mates).exclude(pk=document.pk)[: batch - 1])
            if len(claimed) < batch:
                claimed += list(queued.exclude(pk__in=[d.pk for d in claimed])[: batch - len(claimed)])
        Document.objects.filter(pk__in=[d.pk for d in claimed]).update(
            status=DocumentStatus.PARSING,
            attempts=F("attempts") + 1,
            heartbeat_at=now,
            error_code="",
            error_message="",
            ocr_pages_done=0,
            ocr_pages_total=0,
        )
    order = {d.pk: i for i, d in enumerate(claimed)}
    return sorted(Document.objects.filter(pk__in=order), key=lambda d: order[d.pk])


# Scans can take minutes of OCR: such a document is processed on its own, never holding up a batch.
UNBATCHED_MEDIA_TYPES = ("application/pdf", *IMAGE_MEDIA_TYPES)


def _batchable(document: Document) -> bool:
    return document.size <= settings.KB_INGEST_BATCH_MAX_BYTES and document.media_type not in UNBATCHED_MEDIA_TYPES


def _batchable_ones(documents):
    """Of `documents`, those `_batchable` says may share a batch, in SQL."""
    return documents.filter(size__lte=settings.KB_INGEST_BATCH_MAX_BYTES).exclude(media_type__in=UNBATCHED_MEDIA_TYPES)


def documents_requeue(document_ids: Sequence[int], *, send: bool = True) -> None:
    """Claimed documents back to the queue, and (`send`) sent again, each on its own."""
    for document_id in document_ids:
        try:
            moved = Document.objects.filter(
                pk=document_id, status__in=[DocumentStatus.PARSING, DocumentStatus.EMBEDDING]
            ).update(status=DocumentStatus.QUEUED, heartbeat_at=timezone.now())
            if moved and send:
                enqueue_processing(document_id)
        except Exception:  # the database is down: the resumer finds them stalled later
            logger.warning("could not release document %s; the resumer will", document_id, exc_info=True)


class _Stopwatch:
    """Milliseconds per step of one document, logged when it is done (where does ingestion time go?)."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, step: str, *, share: int = 1) -> None:
        """The time since the last lap, divided by `share` when it was spent for `share` documents at once."""
        now = time.perf_counter()
        self.steps[step] = round((now - self._last) * 1000 / share, 1)
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {ms:.0f} ms" for step, ms in self.steps.items())


@dataclass
class _Prepared:
    """A document parsed and chunked, waiting for its passages' vectors."""

    document: Document
    drafts: list[ChunkDraft]
    inputs: list[str]
    attachments: Sequence[Attachment]
    watch: _Stopwatch


def _process(claimed: list[Document], finished: set[int]) -> None:
    """Parse and chunk each document, embed every passage in one call, then write each document in a
    transaction of its own. A document that fails, or goes, on the way leaves the others to finish."""
    prepared: list[_Prepared] = []
    for position, document in enumerate(claimed):
        try:
            ready = _prepare(document)
        except DocumentGone:
            logger.info("document %s was deleted while being processed; work dropped", document.pk)
            ready = None
        except (OperationalError, InterfaceError):
            if position == 0:
                raise  # transient: the task retries it
            documents_requeue([document.pk])
            ready = None
        except Exception:
            if position == 0:
                raise  # the task reports it
            logger.exception("processing document %s failed", document.pk)
            document_fail(document.pk, code="internal_error", message=INTERNAL_ERROR_MESSAGE)
            ready = None
        if ready is None:
            finished.add(document.pk)
        else:
            prepared.append(ready)
    if not prepared:
        return
    watch = _Stopwatch()
    inputs = [text for item in prepared for text in item.inputs]
    vectors = _embed_with_progress(prepared, inputs)
    watch.lap("embed", share=len(prepared))
    terms = analyze(inputs)
    watch.lap("keywords", share=len(prepared))
    injections = injection_flags([draft.text for item in prepared for draft in item.drafts], vectors)
    watch.lap("injection check", share=len(prepared))
    written = _finalize_all(prepared, vectors, terms, injections)
    watch.lap("write", share=len(prepared))
    for item in prepared:
        item.watch.steps.update(watch.steps)
        finished.add(item.document.pk)
        if item.document.pk not in written:
            logger.info("document %s was deleted while being processed; work dropped", item.document.pk)
            continue
        if item.attachments:
            item.watch.restart()
            _attachments_upload(item.document, item.attachments)
            item.watch.lap("attachments")
        logger.info("document %s indexed: %s chunks; %s", item.document.pk, len(item.drafts), item.watch)


@transaction.atomic
def _finalize_all(prepared: Sequence[_Prepared], vectors: Sequence, terms: Sequence, injections: Sequence) -> set[int]:
    """Write every prepared document in one transaction (one commit, one keyword-index update), each behind a
    savepoint of its own so that one deleted meanwhile drops out alone; returns the ids written. Lineages are
    locked in one global order (by lineage), so that two workers' batches cannot deadlock on them.

    The commit does not wait for the write-ahead log to reach the disk (synchronous_commit off, this transaction
    only): a database crash may lose the last such commits, whose documents are then still in progress and go back
    to the queue when their lease runs out, as a killed worker's do. No audit event is written here."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
    offsets = {}
    start = 0
    for item in prepared:
        offsets[item.document.pk] = (start, start + len(item.inputs))
        start += len(item.inputs)
    index = _IndexChanges()
    written = set()
    for item in sorted(prepared, key=lambda item: str(item.document.lineage)):
        first, last = offsets[item.document.pk]
        try:
            _finalize(
                item.document.pk,
                item.drafts,
                vectors[first:last],
                terms[first:last],
                injections[first:last],
                index=index,
            )
        except DocumentGone:
            continue
        written.add(item.document.pk)
    index.apply()
    return written


class _IndexChanges:
    """Keyword-index changes of several documents' finalisation, applied at once at the end of their
    transaction. A chunk written and removed in the same batch (two versions of one document in it) never
    had postings: it is left out of both sides."""

    def __init__(self) -> None:
        self.add: list[tuple[int, Counter[str]]] = []
        self.remove: list[int] = []

    def apply(self) -> None:
        added = {chunk_id for chunk_id, _ in self.add}
        removed = set(self.remove)
        index_apply(
            add=[(chunk_id, counts) for chunk_id, counts in self.add if chunk_id not in removed],
            remove=[chunk_id for chunk_id in self.remove if chunk_id not in added],
        )


INTERNAL_ERROR_MESSAGE = (
    "An unexpected error stopped processing (it is in the worker's log); try Reindex, and "
    "tell your administrator if it happens again."
)


def _prepare(document: Document) -> _Prepared | None:
    """Read, parse and chunk a claimed document, and move it to embedding; None when it failed (said on it)."""
    watch = _Stopwatch()
    try:
        with document.original.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        document_fail(document.id, code="missing_file", message="The stored file is missing; upload it again.")
        return None
    # Pages read by OCR take a second or more each: their count is the progress shown, and a heartbeat.
    token = ocr_progress.set(partial(_ocr_progress, document.id))
    try:
        parsed = parse_upload(data, document.media_type)
    except ParseError as exc:
        document_fail(document.id, code=exc.code, message=exc.message)
        return None
    finally:
        ocr_progress.reset(token)
    ocr = ocr_report_of(parsed)
    watch.lap("read and parse")
    drafts = chunks_of(parsed)
    if not drafts:
        document_fail(document.id, code="no_text", message="No text was found in this file.")
        return None
    changes = {}
    if document.auto_title and parsed.title:
        document.title = parsed.title.strip()[:300]
        changes = {"title": document.title, "auto_title": False}
    _move(
        document.id,
        DocumentStatus.EMBEDDING,
        chunks_total=len(drafts),
        chunks_embedded=0,
        page_count=parsed.page_count,
        extracted_chars=len(parsed.text),
        ocr_pages=ocr.as_json()["pages"] if ocr else [],
        ocr_engine=ocr.engine if ocr else "",
        ocr_confidence=ocr.mean_confidence if ocr else None,
        **changes,
    )
    watch.lap("chunk")
    inputs = [indexed_text(document.title, d.text, d.heading_path) for d in drafts]
    return _Prepared(document, drafts, inputs, parsed.attachments, watch)


def _ocr_progress(document_id: int, done: int, total: int) -> None:
    updated = Document.objects.filter(pk=document_id, status=DocumentStatus.PARSING).update(
        ocr_pages_done=done, ocr_pages_total=total, heartbeat_at=timezone.now()
    )
    if not updated:
        raise DocumentGone(document_id)


def _attachments_upload(mail: Document, attachments: Sequence[Attachment]) -> None:
    """Each attachment the product can read becomes a document of its own, linked to the mail, with its readers;
    the others are only named in the mail's text. Idempotent: a reindexed mail finds its attachments duplicates."""
    groups = list(mail.access_groups.all())
    for attachment in attachments:
        try:
            media_type = sniff_media_type(attachment.data[:SNIFF_HEAD_BYTES], attachment.filename)
        except ParseError:
            continue  # archives, programs...: not a document to read
        if media_type in IMAGE_MEDIA_TYPES:
            continue  # logos and signatures far more often than scans: named in the mail's text, not read by OCR
        result = document_upload(
            source=ContentFile(attachment.data, name=attachment.filename),
            filename=attachment.filename,
            uploaded_by=mail.uploaded_by,
            access_groups=groups,
            attached_to=mail,
        )
        logger.info("attachment %s of document %s: %s", attachment.filename, mail.pk, result.message)


def _embed_with_progress(prepared: Sequence[_Prepared], inputs: list[str]) -> list:
    """Vectors for `inputs` (the prepared documents' passages, in order), renewing every document's heartbeat
    (its lease) and progress as they are made; stops when every document has gone."""
    # A progress write every eight batches (about a second): enough passages for embed() to group them by
    # length, and one UPDATE per document and step costs nothing measurable.
    step = settings.KB_EMBEDDING_BATCH_SIZE * 8
    ends = []
    total = 0
    for item in prepared:
        total += len(item.inputs)
        ends.append(total)
    ids = [item.document.pk for item in prepared]
    reported = [0] * len(prepared)
    vectors: list = []
    for start in range(0, len(inputs), step):
        vectors.extend(embeddings.embed(inputs[start : start + step]))
        alive = Document.objects.filter(pk__in=ids, status=DocumentStatus.EMBEDDING).update(heartbeat_at=timezone.now())
        if not alive:
            raise DocumentGone(ids[0])
        for position, item in enumerate(prepared):
            done = max(0, min(len(vectors), ends[position]) - (ends[position] - len(item.inputs)))
            if done != reported[position]:
                Document.objects.filter(pk=item.document.pk, status=DocumentStatus.EMBEDDING).update(
                    chunks_embedded=done
                )
                reported[position] = done
    return vectors


def injection_flags(texts: list[str], vectors) -> list[tuple[float, bool]]:
    """(score, untrusted) per passage: text that reads as instructions to a model is flagged, shown on the
    document page and marked untrusted in prompts (kb/guard/injection.py, KB_DOCUMENT_INJECTION_THRESHOLD)."""
    import numpy as np

    from kb.guard.injection import injection_scores, is_injection

    threshold = settings.KB_DOCUMENT_INJECTION_THRESHOLD
    scores = injection_scores(texts, np.asarray(vectors), documents=True)
    return [(round(score.score, 4), is_injection(score, threshold)) for score in scores]


def chunk_from_draft(
    document: Document, draft: ChunkDraft, vector, injection: tuple[float, bool] | None = None
) -> Chunk:
    return Chunk(
        document=document,
        ordinal=draft.ordinal,
        text=draft.text,
        # A passage outside any section is placed in the document itself.
        heading_path=list(draft.heading_path) or [document.title],
        page_start=draft.page_start,
        page_end=draft.page_end,
        char_start=draft.char_start,
        char_end=draft.char_end,
        token_count=draft.token_count,
        embedding=vector,
        injection_score=injection[0] if injection else None,
        untrusted=injection[1] if injection else False,
    )


@transaction.atomic
def _finalize(
    document_id: int,
    drafts: Sequence[ChunkDraft],
    vectors: Sequence,
    terms: Sequence,
    injections: Sequence[tuple[float, bool]] | None = None,
    *,
    index: _IndexChanges | None = None,
) -> None:
    """Write one document's chunks and make it the serving version; `index` collects the keyword-index changes
    for the caller to apply (else they are applied here)."""
    lineage = Document.objects.values_list("lineage", flat=True).get(pk=document_id)
    _lock_lineage(lineage)
    document = Document.objects.select_for_update().get(pk=document_id)
    if document.status != DocumentStatus.EMBEDDING:
        raise DocumentGone(document_id)
    newer = Document.objects.filter(lineage=document.lineage, version__gt=document.version, searchable=True)
    if newer.exists():
        # A later version became ready first: this one never serves.
        document.status = DocumentStatus.SUPERSEDED
        document.save(update_fields=["status", "updated_at"])
        return
    retiring = list(
        Document.objects.select_for_update()
        .filter(lineage=document.lineage, searchable=True)
        .exclude(pk=document.pk)
        .order_by("id")
    )
    # Chunks of this document from an earlier run or index, and of the versions it replaces.
    old_chunk_ids = list(
        Chunk.objects.filter(document__in=[document, *retiring]).order_by("id").values_list("id", flat=True)
    )
    # The (document, ordinal) constraint is deferred to commit, so the new chunks can be written
    # before the old ones of the same document go; one index_apply then moves every frequency at once.
    new_chunks = Chunk.objects.bulk_create(
        [
            chunk_from_draft(document, draft, vector, injections[i] if injections else None)
            for i, (draft, vector) in enumerate(zip(drafts, vectors, strict=True))
        ]
    )
    additions = [(chunk.id, term_counts) for chunk, term_counts in zip(new_chunks, terms, strict=True)]
    if index is None:
        index_apply(add=additions, remove=old_chunk_ids)
    else:
        index.add += additions
        index.remove += old_chunk_ids
    Chunk.objects.filter(id__in=old_chunk_ids).delete()
    for old in retiring:
        old.status = DocumentStatus.SUPERSEDED
        old.searchable = False
        old.save(update_fields=["status", "searchable", "updated_at"])
    document.status = DocumentStatus.READY
    document.searchable = True
    document.chunks_embedded = len(new_chunks)
    document.embedding_model = embeddings.model_id()
    document.ready_at = timezone.now()
    document.heartbeat_at = timezone.now()
    document.save()


# --- lifecycle ------------------------------------------------------------------------------------


@transaction.atomic
def document_delete(*, document: Document) -> None:
    """Remove a document version from search (chunks and postings go) and delete its stored file.

    The row stays, marked deleted, so that audit records that cite it can still name it.
    """
    document = Document.objects.select_for_update().get(pk=document.pk)
    if document.status == DocumentStatus.DELETED:
        return
    chunk_ids = list(document.chunks.order_by("id").values_list("id", flat=True))
    if chunk_ids:
        index_apply(remove=chunk_ids)
        Chunk.objects.filter(id__in=chunk_ids).delete()
    else:
        index_version_bump()
    document.status = DocumentStatus.DELETED
    document.searchable = False
    document.save(update_fields=["status", "searchable", "updated_at"])
    document_audit(kind=AuditKind.DOCUMENT_DELETE, document=document)
    if document.original:
        stored = document.original
        transaction.on_commit(lambda: stored.delete(save=False))
    # An e-mail's attachments came with it: they go with it.
    for attachment in Document.objects.filter(attached_to=document).exclude(status=DocumentStatus.DELETED):
        document_delete(document=attachment)


def document_reindex(*, document: Document) -> bool:
    """Queue a rebuild of one document's chunks; its current index keeps answering meanwhile.

    Returns False when the document cannot be reindexed (deleted, superseded, or already queued).
    """
    with transaction.atomic():
        updated = Document.objects.filter(
            pk=document.pk, status__in=[DocumentStatus.READY, DocumentStatus.FAILED]
        ).update(status=DocumentStatus.QUEUED, attempts=0, heartbeat_at=timezone.now(), error_code="", error_message="")
        if updated:
            transaction.on_commit(partial(enqueue_processing, document.pk))
            document_audit(kind=AuditKind.DOCUMENT_REINDEX, document=document)
    return bool(updated)


def documents_reindex(*, documents: Iterable[Document] | None = None) -> int:
    queryset = Document.objects.current() if documents is None else documents
    return sum(document_reindex(document=document) for document in queryset)


def documents_with_stale_embeddings():
    """Searchable documents embedded by another model (or model setting) than the configured one."""
    return Document.objects.searchable().exclude(embedding_model=embeddings.model_id())


def documents_reindex_stale_embeddings() -> int:
    return documents_reindex(documents=documents_with_stale_embeddings())


@transaction.atomic
def documents_with_their_own(document_ids: Iterable[int]) -> set[int]:
    """These documents with every version of each and, transitively, the attachments of any of them: what a
    change of readers, residency or existence must reach, since an e-mail's attachments carry its content."""
    found: set[int] = set()
    frontier = set(document_ids)
    while frontier:
        found |= frontier
        lineages = Document.objects.filter(pk__in=frontier).values_list("lineage", flat=True)
        versions = set(Document.objects.filter(lineage__in=lineages).values_list("pk", flat=True))
        attachments = set(Document.objects.filter(attached_to__in=versions | frontier).values_list("pk", flat=True))
        frontier = (versions | attachments) - found
    return found


def documents_set_internal_models_only(*, document_ids: Iterable[int], marked: bool) -> set[int]:
    """Mark (or unmark) documents "internal models only", with all their versions and attachments; returns the
    ids changed."""
    ids = documents_with_their_own(document_ids)
    Document.objects.filter(pk__in=ids).update(internal_models_only=marked)
    return ids


def document_set_access_groups(*, document: Document, groups: Iterable) -> None:
    """Set who may read every version of this document and its attachments (none: every employee)."""
    groups = list(groups)
    _lock_lineage(document.lineage)  # a version uploaded meanwhile copies the new readers, not the old
    before = list(document.access_groups.values_list("name", flat=True))
    for version in Document.objects.filter(pk__in=documents_with_their_own([document.pk])):
        version.access_groups.set(groups)
    index_version_bump()
    access_groups_audit(document=document, before=before, after=[group.name for group in groups])


def documents_resume_stalled(*, stalled_for: timedelta | None = None) -> list[int]:
    """Re-send documents whose processing shows no sign of life: a killed worker or a lost message.

    A document being processed is stalled after `stalled_for` (KB_INGEST_STALL_SECONDS) without a
    heartbeat. A queued one only after KB_INGEST_QUEUED_RESEND_SECONDS: in a long backlog it is simply
    waiting its turn, and re-sending it would fill the queue with duplicates. Safe at any time: processing
    is idempotent.
    """
    stalled_for = stalled_for if stalled_for is not None else timedelta(seconds=settings.KB_INGEST_STALL_SECONDS)
    now = timezone.now()
    cutoff = now - stalled_for
    queued_cutoff = now - max(stalled_for, timedelta(seconds=settings.KB_INGEST_QUEUED_RESEND_SECONDS))
    working = Q(status__in=[DocumentStatus.PARSING, DocumentStatus.EMBEDDING]) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    )
    waiting = Q(status=DocumentStatus.QUEUED) & (
        Q(heartbeat_at__lt=queued_cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=queued_cutoff)
    )
    stalled = list(Document.objects.filter(working | waiting).values_list("id", flat=True))
    for document_id in stalled:
        # Back in the queue: its lease is over, and the next worker to see it claims it afresh.
        # (Still stalled when it is moved: a worker that renewed the lease meanwhile keeps it.)
        Document.objects.filter(working | waiting, pk=document_id).update(
            status=DocumentStatus.QUEUED, heartbeat_at=timezone.now()
        )
        enqueue_processing(document_id)
    return stalled


# --- the demo corpus -------------------------------------------------------------------------------

DEMO_GROUP_NAME = "Demo"


def demo_files() -> list[Path]:
    return [path for path in sorted(DEMO_DIR.iterdir()) if not path.name.startswith(".") and path.suffix != ".py"]


def demo_group_ensure():
    """The access group of the demo corpus (see `AccessGroup.demo`), created on first use."""
    from kb.accounts.models import AccessGroup

    group = AccessGroup.objects.filter(demo=True).first()
    if group is not None:
        return group
    name = DEMO_GROUP_NAME
    if AccessGroup.objects.filter(name=name).exists():  # the company's own group of that name stays theirs
        name = f"{DEMO_GROUP_NAME} corpus"
    return AccessGroup.objects.create(
        name=name,
        demo=True,
        description="The bundled demo corpus: answers only until the company's own documents are ready.",
    )


def demo_corpus_load(*, uploaded_by=None) -> list[UploadResult]:
    """Upload the bundled demo documents into the demo access group (identical files already there are
    recognised as duplicates)."""
    group = demo_group_ensure()
    results = []
    with processing_sent_together():
        for path in demo_files():
            with path.open("rb") as handle:
                source = File(handle, name=path.name)
                results.append(
                    document_upload(source=source, filename=path.name, uploaded_by=uploaded_by, access_groups=[group])
                )
    return results


def demo_corpus_adopt() -> int:
    """Once, on an install from before the demo group existed: put its demo documents (current ones with a
    bundled file's bytes and no access group) into that group. Returns how many were moved.

    Only while there is no demo group yet, so that a document an admin later takes out of the group stays out.
    """
    from kb.accounts.models import AccessGroup

    if AccessGroup.objects.filter(demo=True).exists():
        return 0
    hashes = [hashlib.sha256(path.read_bytes()).hexdigest() for path in demo_files()]
    legacy = list(Document.objects.current().filter(sha256__in=hashes, access_groups__isnull=True))
    if legacy:
        group = demo_group_ensure()
        for document in legacy:
            document_set_access_groups(document=document, groups=[group])
    return len(legacy)


def demo_corpus_ensure(*, stdout: Callable[[str], None] = print) -> int:
    """Load the bundled demo documents on the first start, so that a newcomer can ask at once; they stop
    answering once the company's own documents are ready, and `demo_corpus_remove` deletes them."""
    adopted = demo_corpus_adopt()
    if adopted:
        stdout(f"moved {adopted} demo documents into the demo access group; they no longer answer beside yours")
    marker = settings.KB_DATA_DIR / "demo-corpus-loaded"
    if marker.exists() or Document.objects.exists():
        return 0
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.filter(is_superuser=True).order_by("id").first()
    loaded = sum(result.accepted for result in demo_corpus_load(uploaded_by=admin))
    marker.write_text(f"{loaded} documents\n")
    stdout(
        f"loaded {loaded} demo documents from {DEMO_DIR}; the worker indexes them in the background. They answer "
        "until your own documents are ready (remove them on Documents or with `manage.py demo --remove`)"
    )
    return loaded


def demo_corpus_remove() -> int:
    """Delete every version of every demo document (each deletion audited); returns how many versions."""
    removed = 0
    for document in Document.objects.demo().exclude(status=DocumentStatus.DELETED).order_by("pk"):
        document_delete(document=document)
        removed += 1
    return removed
