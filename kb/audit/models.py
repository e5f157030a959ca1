"""The audit log: append-only, hash-chained events (kb/audit/chain.py), and the state around it.

Only kb.audit.services writes events. The database refuses UPDATE and DELETE on the event table
(migration 0002); the retention purge alone may delete, and it records where it cut.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import OuterRef, Q, Subquery
from django.db.models.fields.json import KT

from kb.audit import chain


class AuditKind(models.TextChoices):
    EXCHANGE = "exchange", "Exchange"
    FEEDBACK = "feedback", "Feedback"
    DOCUMENT_UPLOAD = "document_upload", "Document uploaded"
    DOCUMENT_REPLACE = "document_replace", "Document replaced"
    DOCUMENT_DELETE = "document_delete", "Document deleted"
    DOCUMENT_REINDEX = "document_reindex", "Document reindexed"
    ACCESS_GROUPS = "access_groups", "Readers changed"
    EXPORT = "export", "Export"
    PURGE = "purge", "Purge"
    LEGAL_HOLD = "legal_hold", "Legal hold"
    CONFIGURATION = "configuration", "Answer configuration"  # kb/ops: created
    ROLLOUT = "rollout", "Rollout"  # kb/ops: created, evaluated, started, share changed, promoted, rolled back
    TOPIC_CHANGE = "topic_change", "Off-limits topic changed"


# Outcomes of an exchange as the answer pipeline records them (kb.answers.models.Outcome; audit does not
# import answers, GUIDE §2). "pending" never reaches the log: an exchange is recorded when it is finished.
EXCHANGE_OUTCOMES = (
    ("answered", "Answered"),
    ("cached", "Answered from cache"),
    ("refused", "Not covered"),
    ("blocked", "Blocked"),
    ("failed", "Failed"),
    ("cancelled", "Cancelled"),
)


class AuditEventQuerySet(models.QuerySet):
    def exchanges(self) -> AuditEventQuerySet:
        return self.filter(kind=AuditKind.EXCHANGE)

    def between(self, since=None, until=None) -> AuditEventQuerySet:
        """Events at or after `since` and before `until` (datetimes; None: open)."""
        queryset = self
        if since is not None:
            queryset = queryset.filter(created_at__gte=since)
        if until is not None:
            queryset = queryset.filter(created_at__lt=until)
        return queryset

    def by_actor(self, username: str) -> AuditEventQuerySet:
        return self.filter(actor_username=username)

    def touching_document(self, document_id: int) -> AuditEventQuerySet:
        """Events about the document: its uploads and changes, and exchanges that retrieved or cited it."""
        return self.filter(document_ids__contains=[document_id])

    def with_outcome(self, outcome: str) -> AuditEventQuerySet:
        return self.exchanges().filter(data__outcome=outcome)

    def answered_by(self, model: str) -> AuditEventQuerySet:
        return self.exchanges().filter(data__model__icontains=model)

    def with_feedback(self, rating: str) -> AuditEventQuerySet:
        """Exchanges by their latest rating: "up", "down", "any" (rated at all) or "none" (never rated)."""
        latest = (
            AuditEvent.objects.filter(kind=AuditKind.FEEDBACK, exchange_id=OuterRef("exchange_id"))
            .order_by("-seq")
            .annotate(rating=KT("data__rating"))
            .values("rating")[:1]
        )
        exchanges = self.exchanges().annotate(latest_rating=Subquery(latest))
        if rating == "any":
            return exchanges.filter(latest_rating__isnull=False)
        if rating == "none":
            return exchanges.filter(latest_rating__isnull=True)
        return exchanges.filter(latest_rating=rating)

    def mentioning(self, text: str) -> AuditEventQuerySet:
        return self.filter(Q(data__question__icontains=text) | Q(data__answer__icontains=text))


class AuditEvent(models.Model):
    """One event, chained to the one before it. Never updated, deleted only by the retention purge."""

    seq = models.BigIntegerField(primary_key=True, help_text="Gapless order; the chain runs in seq order")
    kind = models.CharField(max_length=32, choices=AuditKind.choices)
    created_at = models.DateTimeField(help_text="When the event was appended (the database's clock)")
    # No foreign key: a user may be deleted later, and the record must keep saying who it was.
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_username = models.CharField(max_length=150, blank=True, help_text="Empty for the system")
    exchange_id = models.BigIntegerField(null=True, blank=True, help_text="For exchange and feedback events")
    document_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    data = models.JSONField(help_text="What happened, in full")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["created_at"], name="audit_event_time"),
            models.Index(fields=["kind", "created_at"], name="audit_event_kind_time"),
            models.Index(fields=["actor_username", "seq"], name="audit_event_actor"),
            models.Index(fields=["exchange_id"], name="audit_event_exchange"),
            GinIndex(fields=["document_ids"], name="audit_event_documents"),
        ]
        constraints = [
            # Two events naming the same predecessor would be a fork: the database refuses the second.
            models.UniqueConstraint(fields=["prev_hash"], name="audit_event_one_successor"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind}"

    def content(self) -> dict:
        return chain.content_of(
            seq=self.seq,
            kind=self.kind,
            created_at=self.created_at,
            actor_id=self.actor_id,
            actor_username=self.actor_username,
            exchange_id=self.exchange_id,
            document_ids=self.document_ids,
            data=self.data,
        )

    def computed_hash(self) -> str:
        return chain.event_hash(self.prev_hash, self.content())

    @property
    def actor_label(self) -> str:
        return self.actor_username or "system"

    @property
    def summary(self) -> str:
        """One line for lists."""
        data = self.data or {}
        if self.kind == AuditKind.EXCHANGE:
            return str(data.get("question", ""))
        if self.kind == AuditKind.FEEDBACK:
            rating = data.get("rating", "")
            comment = data.get("comment") or data.get("reason") or ""
            return f"Exchange {data.get('exchange_id')}: {rating}" + (f" ({comment})" if comment else "")
        if self.kind in (
            AuditKind.DOCUMENT_UPLOAD,
            AuditKind.DOCUMENT_REPLACE,
            AuditKind.DOCUMENT_DELETE,
            AuditKind.DOCUMENT_REINDEX,
        ):
            return f"{data.get('title', '')} (version {data.get('version', '?')})"
        if self.kind == AuditKind.ACCESS_GROUPS:
            after = ", ".join(data.get("after") or []) or "every employee"
            return f"{data.get('title', '')}: readers now {after}"
        if self.kind == AuditKind.EXPORT:
            return f"{str(data.get('format', '')).upper()} export of events before #{self.seq}"
        if self.kind == AuditKind.PURGE:
            return (
                f"{data.get('deleted', 0)} events #{data.get('first_deleted_seq')}–#{data.get('last_deleted_seq')} "
                f"older than {data.get('retention_days')} days"
            )
        if self.kind == AuditKind.LEGAL_HOLD:
            return ("Placed: " if data.get("active") else "Lifted: ") + str(data.get("reason", ""))
        if self.kind == AuditKind.CONFIGURATION:
            configuration = data.get("configuration") or {}
            return f"Configuration {configuration.get('name', '')}: prompt {configuration.get('prompt_version', '')}"
        if self.kind == AuditKind.ROLLOUT:
            candidate = (data.get("candidate") or {}).get("name", "")
            share = data.get("share", 0)
            line = f"Rollout {data.get('rollout_id')} of {candidate} {data.get('action', '')} ({share} %)"
            return line + (f": {data['reason']}" if data.get("reason") else "")
        return ""


class ChainCheck(models.Model):
    """One verification of the whole chain (beat, `manage.py audit_verify`, or the audit page)."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    ok = models.BooleanField()
    rows = models.BigIntegerField(default=0)
    first_seq = models.BigIntegerField(null=True)
    last_seq = models.BigIntegerField(null=True)
    last_hash = models.CharField(max_length=64, blank=True)
    broken_seq = models.BigIntegerField(null=True, help_text="The first event that does not verify")
    message = models.TextField(blank=True)
    triggered_by = models.CharField(max_length=32, blank=True)
    # The newest witnessed checkpoint the log was checked against (none before the first one is signed).
    checkpoint_seq = models.BigIntegerField(null=True)
    checkpoint_signed_at = models.DateTimeField(null=True)

    class Meta:
        indexes = [models.Index(fields=["-finished_at"], name="audit_check_recent")]

    def __str__(self) -> str:
        return f"{self.finished_at:%Y-%m-%d %H:%M} {'ok' if self.ok else 'broken'}"


class CheckpointReason(models.TextChoices):
    EVENTS = "events", "Every N events"
    TIME = "time", "Every M minutes"
    EXPORT = "export", "Export"
    PURGE = "purge", "Purge"
    VERIFY = "verify", "Verification"
    START = "start", "First start with signing"


class Checkpoint(models.Model):
    """A signed statement of the log's head: (first and last seq, last hash, event count, time).

    The signature (kb/audit/signing.py) is over `payload()` as canonical JSON; the same line is appended to
    the witness outside the database (kb/audit/witness.py), which verification takes as the reference.
    """

    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    events = models.BigIntegerField(help_text="Events in the log when signed (last_seq - first_seq + 1)")
    signed_at = models.DateTimeField()
    reason = models.CharField(max_length=16, choices=CheckpointReason.choices)
    key_id = models.CharField(max_length=16)
    signature = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["-last_seq", "-signed_at"]
        indexes = [models.Index(fields=["-last_seq", "-signed_at"], name="audit_checkpoint_newest")]

    def __str__(self) -> str:
        return f"checkpoint #{self.first_seq}–#{self.last_seq} {self.signed_at:%Y-%m-%d %H:%M}"

    def payload(self) -> dict:
        return checkpoint_payload(
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            last_hash=self.last_hash,
            events=self.events,
            signed_at=chain.timestamp(self.signed_at),
            reason=self.reason,
            key_id=self.key_id,
        )


def checkpoint_payload(**fields) -> dict:
    """What a checkpoint signs; `signed_at` is ISO 8601 UTC text, as in chain.timestamp()."""
    return {"v": 1, **fields}


class LegalHold(models.Model):
    """While active, nothing is purged (KB_AUDIT_LEGAL_HOLD holds it too). One row, pk=1; changes are audited."""

    active = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return "legal hold on" if self.active else "legal hold off"
