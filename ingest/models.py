from __future__ import annotations

import functools
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, models
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Lower, Upper
from django.utils import timezone
from pgvector.django import VectorField

from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role, has_role

HEADING_SEPARATOR = " › "


def heading_label(path) -> str:
    """A heading path as people read it: "Policy › Travel › Hotels"."""
    return HEADING_SEPARATOR.join(path)


def page_label(start: int | None, end: int | None) -> str:
    """ "3", "3–5", or "" when the passage has no page (not a PDF)."""
    if start is None:
        return ""
    if end and end != start:
        return f"{start}–{end}"
    return str(start)


def page_ranges(pages: Iterable[int]) -> str:
    """ "1–3, 7" for [1, 2, 3, 7]."""
    ranges: list[list[int]] = []
    for page in sorted(set(pages)):
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    return ", ".join(page_label(start, end) for start, end in ranges)


class DocumentStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PARSING = "parsing", "Parsing"
    EMBEDDING = "embedding", "Embedding"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded"
    DELETED = "deleted", "Deleted"


IN_PROGRESS = (DocumentStatus.QUEUED, DocumentStatus.PARSING, DocumentStatus.EMBEDDING)
# Which status may follow which; services refuse any other move.
TRANSITIONS: dict[str, set[str]] = {
    DocumentStatus.QUEUED: {DocumentStatus.PARSING, DocumentStatus.FAILED, DocumentStatus.DELETED},
    DocumentStatus.PARSING: {
        DocumentStatus.PARSING,  # a redelivered task starts again
        DocumentStatus.EMBEDDING,
        DocumentStatus.FAILED,
        DocumentStatus.DELETED,
        DocumentStatus.QUEUED,
    },
    DocumentStatus.EMBEDDING: {
        DocumentStatus.PARSING,
        DocumentStatus.READY,
        DocumentStatus.FAILED,
        DocumentStatus.DELETED,
        DocumentStatus.QUEUED,
    },
    DocumentStatus.READY: {DocumentStatus.QUEUED, DocumentStatus.SUPERSEDED, DocumentStatus.DELETED},
    DocumentStatus.FAILED: {DocumentStatus.QUEUED, DocumentStatus.DELETED},
    DocumentStatus.SUPERSEDED: {DocumentStatus.DELETED},
    DocumentStatus.DELETED: set(),
}


class DocumentQuerySet(models.QuerySet):
    def current(self) -> DocumentQuerySet:
        """Documents that are not deleted or replaced by a newer version."""
        return self.exclude(status__in=[DocumentStatus.DELETED, DocumentStatus.SUPERSEDED])

    def searchable(self) -> DocumentQuerySet:
        return self.filter(searchable=True)

    def readable_by(self, user) -> DocumentQuerySet:
        """Documents this user may read (the rule is `ReadScope.for_user`)."""
        return self.in_scope(ReadScope.for_user(user))

    def in_scope(self, scope: ReadScope) -> DocumentQuerySet:
        """Documents a read scope admits: all, none, or those with no access group or one of its groups;
        and the demo corpus, for every scope, but only while none of the company's own documents is searchable.

        The search legs' SQL is compiled from this filter (`ReadScope.sql`): keep it to conditions on the
        document row and subqueries (no joins), so that it stays one cheap test per candidate row. Whether
        the company has its own documents is an uncorrelated subquery: PostgreSQL evaluates it once per query.
        """
        if scope.nothing:
            return self.none()
        grouped = Document.access_groups.through.objects.filter(document=OuterRef("pk"))
        in_demo = Q(pk__in=_demo_document_ids())
        demo_allowed = Q(~Exists(Document.objects.searchable().own())) | ~in_demo
        if scope.everything:
            return self.filter(demo_allowed)
        allowed = Q(~Exists(grouped)) | in_demo
        if scope.group_ids:
            allowed |= Q(Exists(grouped.filter(accessgroup_id__in=scope.group_ids)))
        return self.filter(allowed & demo_allowed)

    def demo(self) -> DocumentQuerySet:
        """The demo corpus: documents in the demo access group."""
        return self.filter(pk__in=_demo_document_ids())

    def own(self) -> DocumentQuerySet:
        """The company's own documents: every one not in the demo access group."""
        return self.exclude(pk__in=_demo_document_ids())

    def same_title_details(self, document_ids: Iterable[int]) -> dict[int, str]:
        """What tells each of `document_ids` apart from another document of this queryset that carries the
        same title (case aside): its file name and upload date. Documents whose title is their own (or shared
        only with their own versions) are left out."""
        named = list(
            Document.objects.filter(pk__in=set(document_ids)).only("title", "filename", "lineage", "created_at")
        )
        if not named:
            return {}
        lineages: dict[str, set] = defaultdict(set)
        titled = self.annotate(title_key=Lower("title")).filter(title_key__in={d.title.lower() for d in named})
        for title_key, lineage in titled.values_list("title_key", "lineage").distinct():
            lineages[title_key].add(lineage)
        return {
            d.pk: f"{d.filename}, uploaded {timezone.localdate(d.created_at):%Y-%m-%d}"
            for d in named
            if lineages[d.title.lower()] - {d.lineage}
        }

    def namesakes(self, document: Document) -> DocumentQuerySet:
        """Other documents (not versions of `document`) with its title, case aside."""
        return self.filter(title__iexact=document.title).exclude(lineage=document.lineage)

    def in_progress(self) -> DocumentQuerySet:
        return self.filter(status__in=IN_PROGRESS)


def _demo_document_ids():
    """The ids of the documents in the demo access group, as a subquery. Uncorrelated, so that PostgreSQL
    computes the (small) set once per query and tests each candidate row against it by hash."""
    demo_groups = AccessGroup.objects.filter(demo=True).values("pk")
    return Document.access_groups.through.objects.filter(accessgroup_id__in=demo_groups).values("document_id")


def original_upload_to(document: Document, filename: str) -> str:
    # Content-addressed, so the stored name never carries user input.
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return f"originals/{document.sha256[:2]}/{document.sha256}{suffix[:10]}"


class Document(models.Model):
    """One version of an uploaded file. Versions of the same document share a `lineage`."""

    title = models.CharField(max_length=300)
    # True while the title is only derived from the file name; the document's own title (first heading,
    # PDF metadata) replaces it once the file is parsed.
    auto_title = models.BooleanField(default=False)
    filename = models.CharField(max_length=255, help_text="The uploaded file's name, made safe for display")
    original = models.FileField(upload_to=original_upload_to, max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    media_type = models.CharField(max_length=120, blank=True)
    size = models.BigIntegerField()
    lineage = models.UUIDField(default=uuid.uuid4, db_index=True)
    version = models.PositiveIntegerField(default=1)
    replaces = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaced_by")
    # The e-mail this file was attached to; it is a document of its own (its own versions, status, passages).
    attached_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="attachments"
    )
    status = models.CharField(max_length=20, choices=DocumentStatus.choices, default=DocumentStatus.QUEUED)
    # True while this version's chunks answer questions; stays True during a reindex so that there is no
    # downtime, and through a failed reindex (the previous index keeps serving).
    searchable = models.BooleanField(default=False)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    # Pages read by OCR (scans without a text layer, images): per page its number, confidence, characters read
    # and, for a page that could not be read, why; empty when no page needed OCR.
    ocr_pages = models.JSONField(default=list, blank=True)
    ocr_engine = models.CharField(max_length=60, blank=True)
    ocr_confidence = models.FloatField(null=True, blank=True, help_text="Mean confidence of the pages OCR read")
    # Progress while the worker reads pages by OCR (during "parsing").
    ocr_pages_done = models.PositiveIntegerField(default=0)
    ocr_pages_total = models.PositiveIntegerField(default=0)
    extracted_chars = models.PositiveIntegerField(default=0)
    embedding_model = models.CharField(max_length=200, blank=True)
    access_groups = models.ManyToManyField("accounts.AccessGroup", blank=True, related_name="documents")
    internal_models_only = models.BooleanField(
        default=False, help_text="Its passages go only to models on the company's own infrastructure"
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from the worker")
    attempts = models.PositiveIntegerField(default=0)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["searchable"]),
            # An upload looks for the document it is a new version of by title (case aside) or file name: without
            # these, every upload reads the whole table (a 50,000-document import would read it 50,000 times).
            models.Index(Upper("title"), name="document_title_upper"),
            models.Index(fields=["filename"], name="document_filename"),
        ]
        constraints = [models.UniqueConstraint(fields=["lineage", "version"], name="document_unique_version")]

    def __str__(self) -> str:
        return f"{self.title} (v{self.version})"

    @property
    def progress_percent(self) -> int:
        if self.status == DocumentStatus.READY:
            return 100
        if self.status == DocumentStatus.PARSING or not self.chunks_total:
            return 0
        return int(100 * self.chunks_embedded / self.chunks_total)

    @property
    def ocr_read(self) -> list[dict]:
        return [page for page in self.ocr_pages if not page.get("problem")]

    @property
    def ocr_unreadable(self) -> list[dict]:
        return [page for page in self.ocr_pages if page.get("problem")]

    @property
    def ocr_read_label(self) -> str:
        """The pages OCR read, as ranges: "1–3, 7"."""
        return page_ranges([page["page"] for page in self.ocr_read])

    @property
    def is_in_progress(self) -> bool:
        return self.status in IN_PROGRESS


@dataclass(frozen=True)
class ReadScope:
    """Which documents a user may read: all, none, or those with no access group or one of `group_ids`;
    in every scope the demo corpus only until the company's own documents are ready (`in_scope`).

    The one read-permission rule: `Document.objects.readable_by(user)` filters by it, and search puts
    `sql()` (compiled from that same filter) inside its legs. A scope is plain facts, so it can key a cache.
    """

    everything: bool = False
    group_ids: tuple[int, ...] = ()
    nothing: bool = False

    @classmethod
    def for_user(cls, user) -> ReadScope:
        if not (user and user.is_authenticated and user.is_active):
            return cls(nothing=True)
        if user.is_superuser or has_role(user, Role.KNOWLEDGE_ADMIN):
            return cls(everything=True)  # knowledge admins manage every document
        if not has_role(user, Role.EMPLOYEE):
            return cls(nothing=True)
        return cls(group_ids=tuple(sorted(user.access_groups.values_list("id", flat=True))))

    @classmethod
    def all_documents(cls) -> ReadScope:
        """For offline evaluation in an isolated index; never for a request."""
        return cls(everything=True)

    @property
    def key(self) -> str:
        if self.nothing:
            return "none"
        if self.everything:
            return "all"
        return "groups:" + ",".join(map(str, self.group_ids))

    def sql(self) -> tuple[str, dict]:
        """A condition on the `ingest_document` table (by that name, unaliased) that admits exactly the
        searchable documents in scope, with its named parameters: the WHERE clause the ORM writes for
        `Document.objects.searchable().in_scope(self)`."""
        if self.nothing:
            return "false", {}
        sql, params = _scope_sql(self)
        return sql, dict(params)


_PLACEHOLDER = re.compile(r"%%|%s")
# Distinct scopes are few (one per combination of access groups that users hold), and building the ORM query
# costs a few milliseconds, a share of a search worth saving.
SCOPE_SQL_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=SCOPE_SQL_CACHE_SIZE)
def _scope_sql(scope: ReadScope) -> tuple[str, tuple[tuple[str, object], ...]]:
    query = Document.objects.searchable().in_scope(scope).query
    where, params = query.get_compiler(connection=connection).compile(query.where)
    names = iter(f"scope_{number}" for number in range(len(params)))
    # The ORM writes positional placeholders; the legs' SQL uses named ones.
    named = _PLACEHOLDER.sub(lambda match: "%%" if match.group() == "%%" else f"%({next(names)})s", where)
    return named, tuple((f"scope_{number}", value) for number, value in enumerate(params))


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    heading_path = models.JSONField(default=list, blank=True)
    page_start = models.PositiveIntegerField(null=True, blank=True)
    page_end = models.PositiveIntegerField(null=True, blank=True)
    char_start = models.PositiveIntegerField()
    char_end = models.PositiveIntegerField()
    token_count = models.PositiveIntegerField()
    # Text that reads as instructions to a model (kb/guard/injection.py): flagged at ingest, shown on the
    # document page, and given to the model marked as untrusted.
    injection_score = models.FloatField(null=True, blank=True)
    untrusted = models.BooleanField(default=False)
    embedding = VectorField(dimensions=384)

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            # Deferred: a reindex writes the new chunks before it deletes the old ones, in one transaction.
            models.UniqueConstraint(
                fields=["document", "ordinal"], name="chunk_unique_ordinal", deferrable=models.Deferrable.DEFERRED
            )
        ]
        # The HNSW index is created by hand (migrations 0009 and 0010): it is on half-precision copies of the vectors,
        # `((embedding::halfvec(384)) halfvec_cosine_ops)`, which Django's index expressions cannot write (they put
        # the operator class inside the cast's parentheses). Half the index of float32 vectors, so twice the passages
        # fit in memory, with the same recall (measured at 100k passages, see the README's Scale); the vector leg
        # orders by the same expression (`kb.search.retrieval.HNSW_ORDER`) and returns the exact float32 distance.

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"

    @property
    def heading(self) -> str:
        return heading_label(self.heading_path)

    @property
    def pages(self) -> str:
        return page_label(self.page_start, self.page_end)
