"""Writes to the audit log (GUIDE §2: nothing else writes audit rows): append, verify, purge, legal hold,
and the start of an export.

Appends are serialised by one transaction-level advisory lock: the writer reads the chain head and inserts
the next event while holding it, so concurrent writers (threads, processes, machines) never fork the chain,
and seq stays gapless (a rolled-back append leaves no hole: the next writer takes the same seq). The lock
is held until the caller's transaction commits, so record events last in a transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from kb.audit import chain
from kb.audit.export import ExportStream
from kb.audit.filters import EXPORT_FORMATS, AuditFilters
from kb.audit.middleware import request_actor
from kb.audit.models import AuditEvent, AuditKind, ChainCheck, LegalHold

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock's two-key form: its key space is separate from the one-key locks that ingest takes
# per document lineage, so the two can never collide. The values only need to be unique in this project.
CHAIN_LOCK = (7, 1)
# The head of the chain and the database's clock, read under the lock in one round trip. The database's
# clock (not this machine's) so that times follow seq order across machines.
_HEAD = """
SELECT clock_timestamp(), head.seq, head.hash
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1) AS head ON true
"""
# Rows per round trip when verification reads the whole chain through a server-side cursor.
VERIFY_FETCH_ROWS = 2000
# Events deleted per purge transaction. Appends wait while a batch is checked and deleted (about 0.1 s per
# thousand events); a first purge of a long backlog is cut into many short pauses, one purge event each.
PURGE_BATCH_ROWS = 5000


class AuditError(Exception):
    """Something the caller asked for that the audit log cannot do; the message says what to do."""


class LegalHoldActive(AuditError):
    pass


class ChainBroken(AuditError):
    pass


def _user_or_none(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def audit_record(
    *,
    kind: str,
    data: Mapping[str, Any],
    actor=None,
    exchange_id: int | None = None,
    document_ids: Iterable[int] = (),
) -> AuditEvent:
    """Append one event, in the caller's transaction when there is one.

    `actor`: the user acting; by default the signed-in user of the request being served (none outside a
    request: the system). `exchange_id` and `document_ids` index the event for the filters; they default
    to data["exchange_id"] and data["document_id"]. Credentials found in `data` are redacted.
    """
    if kind not in AuditKind.values:
        raise ValueError(f"unknown audit event kind {kind!r}: use one of {', '.join(AuditKind.values)}")
    content = chain.plain(dict(data))
    if exchange_id is None and type(content.get("exchange_id")) is int:
        exchange_id = content["exchange_id"]
    ids = {int(i) for i in document_ids}
    if not ids and type(content.get("document_id")) is int:
        ids = {content["document_id"]}
    return _append(
        kind=kind,
        content=content,
        user=_user_or_none(actor) or request_actor(),
        exchange_id=exchange_id,
        document_ids=sorted(ids),
    )


def _append(
    *,
    kind: str,
    content: dict,
    user,
    exchange_id: int | None,
    document_ids: list[int],
    after: tuple[int, str] | None = None,
) -> AuditEvent:
    """`after`: the (seq, hash) to follow when the table is empty because a purge just removed every event."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", CHAIN_LOCK)
        cursor.execute(_HEAD)
        now, head_seq, head_hash = cursor.fetchone()
        if head_seq is None and after is not None:
            head_seq, head_hash = after
        event = AuditEvent(
            seq=(head_seq or 0) + 1,
            kind=kind,
            created_at=now,
            actor_id=user.pk if user is not None else None,
            actor_username=user.get_username() if user is not None else "",
            exchange_id=exchange_id,
            document_ids=document_ids,
            data=content,
            prev_hash=head_hash or chain.GENESIS,
        )
        event.hash = event.computed_hash()
        event.save(force_insert=True)
    return event


# --- what is recorded -------------------------------------------------------------------------------------


def exchange_audit(*, exchange) -> AuditEvent:
    """Record a finished exchange (a kb.answers Exchange row, read after its last update) as one event."""
    attempts = list(exchange.attempts or [])
    passages = list(exchange.passages or [])
    citations = list(exchange.citations or [])
    data = {
        "exchange_id": exchange.pk,
        "time": exchange.created_at,
        "finished_at": exchange.finished_at,
        "conversation_id": exchange.conversation_id,
        "request_id": exchange.request_id,
        "question": exchange.question,
        "search_query": exchange.search_query,
        "guard": exchange.guard_verdicts,  # every input and output guard's verdict
        "passages": passages,
        "evidence_score": exchange.evidence_score,
        "prompt_version": exchange.prompt_version,
        "chain": exchange.chain,
        "model": exchange.model,
        "attempts": attempts,
        "fallback_used": exchange.fallback_used,
        "fallback_reasons": [
            f"{a.get('link')}: {a.get('reason')}" for a in attempts if a.get("outcome") != "ok" and a.get("reason")
        ],
        "cache": exchange.cache,
        "outcome": exchange.outcome,
        "refused": exchange.refused,
        "refusal_reason": exchange.refusal_reason,
        "answer": exchange.answer,
        "citations": citations,
        "grounding": exchange.grounding,  # per sentence: what it cites and its support score
        "notices": exchange.notices,
        "usage": exchange.usage,
        "cost_usd": exchange.cost_usd,
        "latency": exchange.latency,
        "latency_ms": exchange.latency_ms,
        "error": exchange.error,
    }
    documents = {p.get("document_id") for p in passages} | {c.get("document_id") for c in citations}
    return audit_record(
        kind=AuditKind.EXCHANGE,
        actor=exchange.user,
        data=data,
        exchange_id=exchange.pk,
        document_ids=[d for d in documents if isinstance(d, int)],
    )


def _document_data(document) -> dict:
    return {
        "document_id": document.pk,
        "lineage": document.lineage,
        "version": document.version,
        "title": document.title,
        "filename": document.filename,
        "sha256": document.sha256,
        "size": document.size,
        "media_type": document.media_type,
    }


def document_upload_audit(*, document, actor=None) -> AuditEvent:
    """A stored upload: a new document, or (with `replaces`) a new version of one."""
    replaces = document.replaces_id
    return audit_record(
        kind=AuditKind.DOCUMENT_REPLACE if replaces else AuditKind.DOCUMENT_UPLOAD,
        actor=actor,
        data={
            **_document_data(document),
            "status": document.status,
            "replaces_id": replaces,
            "access_groups": sorted(group.name for group in document.access_groups.all()),
            "error": document.error_message,
        },
        document_ids=[document.pk, *([replaces] if replaces else [])],
    )


def document_audit(*, kind: str, document, actor=None) -> AuditEvent:
    """A deletion or a reindex of one document version."""
    return audit_record(kind=kind, actor=actor, data=_document_data(document), document_ids=[document.pk])


def access_groups_audit(*, document, before: Iterable[str], after: Iterable[str], actor=None) -> AuditEvent:
    versions = sorted(type(document).objects.filter(lineage=document.lineage).values_list("pk", flat=True))
    return audit_record(
        kind=AuditKind.ACCESS_GROUPS,
        actor=actor,
        data={
            **_document_data(document),
            "before": sorted(before),
            "after": sorted(after),
            "versions": versions,
        },
        document_ids=versions,
    )


# --- verification -----------------------------------------------------------------------------------------


@dataclass
class ChainReport:
    ok: bool
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = ""
    broken_seq: int | None = None
    reason: str = ""

    def message(self) -> str:
        if self.ok:
            if not self.rows:
                return "OK: the audit log is empty."
            return f"OK: {self.rows:,} events verified (#{self.first_seq}–#{self.last_seq}); last hash {self.last_hash}"
        return f"BROKEN at event #{self.broken_seq}: {self.reason}"


def _walk() -> ChainReport:
    """Recompute every hash and link in seq order; stops at the first event that does not verify.

    The oldest event links to the genesis value (seq 1) or to the anchor a purge event recorded when it
    removed the events before it.
    """
    anchors = {
        (data.get("first_kept_seq"), data.get("anchor_hash"))
        for data in AuditEvent.objects.filter(kind=AuditKind.PURGE).values_list("data", flat=True)
    }
    report = ChainReport(ok=True)
    expected_prev = ""
    rows = AuditEvent.objects.order_by("seq").values_list(*chain.ROW_FIELDS)
    for row in rows.iterator(chunk_size=VERIFY_FETCH_ROWS):
        seq, prev_hash, hash_ = row[0], row[-2], row[-1]
        if report.first_seq is None:
            report.first_seq = seq
            if seq == 1:
                expected_prev = chain.GENESIS
            elif (seq, prev_hash) in anchors:
                expected_prev = prev_hash
            else:
                return _broken(
                    report, seq - 1, f"event #{seq - 1} and any before it were removed without a purge record"
                )
        elif seq != report.last_seq + 1:  # type: ignore[operator]
            missing = report.last_seq + 1  # type: ignore[operator]
            gap = f"#{missing}" if seq == missing + 1 else f"#{missing}–#{seq - 1}"
            return _broken(report, missing, f"event {gap} is missing")
        if prev_hash != expected_prev:
            return _broken(report, seq, "its prev_hash is not the hash of the event before it")
        if chain.row_hash(row) != hash_:
            return _broken(report, seq, "its content does not match its hash: the event was changed")
        expected_prev = hash_
        report.rows += 1
        report.last_seq, report.last_hash = seq, hash_
    return report


def _broken(report: ChainReport, seq: int, reason: str) -> ChainReport:
    report.ok, report.broken_seq, report.reason = False, seq, reason
    return report


def _compare_with_last_check(report: ChainReport, last: ChainCheck | None) -> ChainReport:
    """Removing events from the end, or rewriting the chain with fresh hashes, leaves a chain that verifies:
    compare the head that the last good check saw with what is there now."""
    if not report.ok or last is None or last.last_seq is None:
        return report
    if report.first_seq is not None and last.last_seq < report.first_seq:
        return report  # purged since
    when = timezone.localtime(last.finished_at).strftime("%Y-%m-%d %H:%M")
    if report.last_seq is None or report.last_seq < last.last_seq:
        return _broken(
            report,
            last.last_seq,
            f"the log now ends before event #{last.last_seq}, verified on {when}: events were removed",
        )
    now_hash = AuditEvent.objects.filter(seq=last.last_seq).values_list("hash", flat=True).first()
    if now_hash != last.last_hash:
        return _broken(
            report, last.last_seq, f"its hash differs from the one verified on {when}: the chain was rewritten"
        )
    return report


def chain_verify(*, triggered_by: str = "") -> ChainReport:
    """Verify the whole chain, record the result (audit page, /metrics) and log an error when it is broken."""
    started = timezone.now()
    last = ChainCheck.objects.filter(ok=True).order_by("-finished_at", "-id").first()
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            # One snapshot for the purge anchors, the walk and the head comparison.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        report = _compare_with_last_check(_walk(), last)
    ChainCheck.objects.create(
        started_at=started,
        finished_at=timezone.now(),
        ok=report.ok,
        rows=report.rows,
        first_seq=report.first_seq,
        last_seq=report.last_seq,
        last_hash=report.last_hash,
        broken_seq=report.broken_seq,
        message=report.message(),
        triggered_by=triggered_by[:32],
    )
    if report.ok:
        logger.info("audit chain verified: %s", report.message())
    else:
        logger.error("AUDIT CHAIN BROKEN: %s", report.message())
    return report


# --- retention --------------------------------------------------------------------------------------------


@dataclass
class HoldStatus:
    active: bool
    by_setting: bool = False
    reason: str = ""
    changed_by: str = ""
    changed_at: dt.datetime | None = None

    def message(self) -> str:
        if self.by_setting:
            return (
                "A legal hold is on (KB_AUDIT_LEGAL_HOLD=true): nothing was purged. "
                "Unset the variable when the hold ends."
            )
        when = f" on {self.changed_at:%Y-%m-%d}" if self.changed_at else ""
        who = f" by {self.changed_by}" if self.changed_by else ""
        return (
            f"A legal hold is on (placed{who}{when}: {self.reason}): nothing was purged. "
            "A Compliance officer lifts it on the audit page when the hold ends."
        )


def legal_hold_status(*, for_update: bool = False) -> HoldStatus:
    rows = LegalHold.objects.select_related("changed_by")
    if for_update:
        rows = rows.select_for_update(of=("self",))
    hold = rows.filter(pk=1).first()
    if settings.KB_AUDIT_LEGAL_HOLD:
        return HoldStatus(active=True, by_setting=True)
    if hold is None or not hold.active:
        return HoldStatus(active=False)
    return HoldStatus(
        active=True,
        reason=hold.reason,
        changed_by=hold.changed_by.get_username() if hold.changed_by else "",
        changed_at=hold.changed_at,
    )


@transaction.atomic
def legal_hold_set(*, active: bool, reason: str, actor) -> LegalHold:
    """Place or lift the legal hold (a Compliance decision, recorded in the log)."""
    reason = (reason or "").strip()
    if active and not reason:
        raise AuditError("Say why the hold is placed (the matter or request it is for).")
    hold, _ = LegalHold.objects.select_for_update().get_or_create(pk=1)
    if hold.active == active:
        raise AuditError("The legal hold is already on." if active else "There is no legal hold to lift.")
    hold.active, hold.reason, hold.changed_by, hold.changed_at = active, reason, actor, timezone.now()
    hold.save()
    audit_record(kind=AuditKind.LEGAL_HOLD, actor=actor, data={"active": active, "reason": reason})
    return hold


@dataclass
class PurgeResult:
    cutoff: dt.datetime
    deleted: int = 0
    purge_events: list[int] = field(default_factory=list)

    def message(self) -> str:
        days = settings.KB_AUDIT_RETENTION_DAYS
        if not self.deleted:
            return f"Nothing to purge: no event is older than {days} days (before {self.cutoff:%Y-%m-%d %H:%M} UTC)."
        events = ", ".join(f"#{seq}" for seq in self.purge_events)
        return (
            f"Purged {self.deleted:,} events older than {days} days (before {self.cutoff:%Y-%m-%d %H:%M} UTC); "
            f"recorded as purge event {events}."
        )


def _check_batch(start: int, end: int) -> None:
    """Refuse to delete events that do not verify: they are the evidence that something happened."""
    rows = AuditEvent.objects.filter(seq__gte=start, seq__lte=end).order_by("seq").values_list(*chain.ROW_FIELDS)
    expected_seq, expected_prev = start, None
    for row in rows:
        seq, prev_hash, hash_ = row[0], row[-2], row[-1]
        if (
            seq != expected_seq
            or (expected_prev is not None and prev_hash != expected_prev)
            or chain.row_hash(row) != hash_
        ):
            raise ChainBroken(
                f"Nothing was purged: event #{expected_seq} does not verify, and purging would destroy the "
                "evidence. Run manage.py audit_verify and investigate first."
            )
        expected_seq, expected_prev = seq + 1, hash_
    if expected_seq != end + 1:
        raise ChainBroken(f"Nothing was purged: event #{expected_seq} is missing. Run manage.py audit_verify.")


def audit_purge(*, now: dt.datetime | None = None, actor=None) -> PurgeResult:
    """Delete the events older than KB_AUDIT_RETENTION_DAYS, oldest first, unless a legal hold is on.

    Only a prefix of the chain is ever deleted (up to the first event that must be kept), and each batch
    records a purge event carrying the hash of the last event it deleted: the oldest remaining event names
    that hash as its predecessor, so verification starts from the anchor. `now`: purge as of this moment.
    """
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.KB_AUDIT_RETENTION_DAYS)
    result = PurgeResult(cutoff=cutoff)
    ceiling: int | None = None  # the newest event when the purge started: never delete its own records
    while True:
        with transaction.atomic():
            hold = legal_hold_status(for_update=True)
            if hold.active:
                raise LegalHoldActive(hold.message())
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", CHAIN_LOCK)
                cursor.execute("SELECT min(seq), max(seq) FROM audit_auditevent")
                oldest, newest = cursor.fetchone()
                if oldest is None:
                    break
                ceiling = newest if ceiling is None else ceiling
                cursor.execute("SELECT min(seq) FROM audit_auditevent WHERE created_at >= %s", [cutoff])
                (first_kept,) = cursor.fetchone()
                keep_from = min(first_kept if first_kept is not None else newest + 1, ceiling + 1)
                if oldest >= keep_from:
                    break
                end = min(keep_from, oldest + PURGE_BATCH_ROWS) - 1  # the last event this batch deletes
                _check_batch(oldest, end)
                cursor.execute("SELECT hash FROM audit_auditevent WHERE seq = %s", [end])
                (anchor,) = cursor.fetchone()
                cursor.execute("SELECT set_config('kb.audit_purge', 'on', true)")
                cursor.execute("DELETE FROM audit_auditevent WHERE seq <= %s", [end])
                deleted = cursor.rowcount
                cursor.execute("SELECT set_config('kb.audit_purge', 'off', true)")
            event = _append(
                kind=AuditKind.PURGE,
                content=chain.plain(
                    {
                        "cutoff": cutoff,
                        "retention_days": settings.KB_AUDIT_RETENTION_DAYS,
                        "deleted": deleted,
                        "first_deleted_seq": oldest,
                        "last_deleted_seq": end,
                        "first_kept_seq": end + 1,
                        "anchor_hash": anchor,
                    }
                ),
                user=_user_or_none(actor) or request_actor(),
                exchange_id=None,
                document_ids=[],
                after=(end, anchor),  # this batch may have removed every event
            )
        result.deleted += deleted
        result.purge_events.append(event.seq)
    # Verification results older than the retention period go too, except failures: they stay as evidence.
    ChainCheck.objects.filter(ok=True, finished_at__lt=cutoff).delete()
    return result


# --- export -----------------------------------------------------------------------------------------------


def audit_export_begin(*, filters: AuditFilters, format: str, actor=None, via: str = "", trailer: bool = False):
    """Record the export (before any row leaves), then return the stream of the events before that record.

    `trailer`: end the file with the manifest (HTTP downloads); otherwise read it from `stream.manifest`.
    """
    if format not in EXPORT_FORMATS:
        raise AuditError(f"Unknown export format {format!r}: use {' or '.join(EXPORT_FORMATS)}.")
    with transaction.atomic():
        event = audit_record(
            kind=AuditKind.EXPORT, actor=actor, data={"format": format, "filters": filters.as_dict(), "via": via}
        )
    return ExportStream(filters=filters, format=format, export_seq=event.seq, trailer=trailer)
