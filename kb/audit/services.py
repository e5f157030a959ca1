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
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from kb.audit import chain
from kb.audit.export import ExportStream
from kb.audit.filters import EXPORT_FORMATS, AuditFilters
from kb.audit.middleware import request_actor
from kb.audit.models import AuditEvent, AuditKind, ChainCheck, Checkpoint, CheckpointReason, LegalHold
from kb.audit.signing import SigningKey, signing_key
from kb.audit.witness import witness_append, witness_holds, witness_read

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
# What a purge event's signature covers (with the key id): its range and the anchor it leaves.
PURGE_SIGNED_FIELDS = ("first_deleted_seq", "last_deleted_seq", "first_kept_seq", "anchor_hash", "deleted")


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
        if event.seq % settings.KB_AUDIT_CHECKPOINT_EVERY_EVENTS == 0:  # one modulo: nothing on the ask path
            transaction.on_commit(_checkpoint_soon)
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
        "configuration_id": getattr(exchange, "configuration_id", None),  # kb/ops: the answer configuration
        "chain": exchange.chain,
        "routing": exchange.routing,  # tier, why, the chain used, whether the internal-models-only rule applied
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


# --- checkpoints ------------------------------------------------------------------------------------------

# The head as one snapshot: the database's clock, the oldest event, the newest and its hash.
_SPAN = """
SELECT clock_timestamp(), (SELECT min(seq) FROM audit_auditevent), head.seq, head.hash
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1) AS head ON true
"""


def _signed_text(value: Mapping[str, Any]) -> bytes:
    return chain.canonical_json(value).encode("utf-8")


def checkpoint_make(*, reason: str, head: tuple[int, int, str] | None = None) -> Checkpoint | None:
    """Sign the log's head (first seq, last seq, last hash, event count, time), store it, append it to the witness.

    `head`: the (first_seq, last_seq, last_hash) to sign (what a verification just read); by default the
    committed head now. Periodic reasons (events, time, verify) sign nothing when the newest checkpoint already
    covers the head; export and purge always sign. Call it outside a transaction: the witness line is written
    after the row is saved, and a rollback afterwards would leave a witness line with no row (reported).
    """
    key = signing_key()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_SPAN)
        now, oldest, newest, newest_hash = cursor.fetchone()
        if head is None:
            if newest is None:
                return None
            head = (oldest, newest, newest_hash)
        first_seq, last_seq, last_hash = head
        if reason in (CheckpointReason.EVENTS, CheckpointReason.TIME, CheckpointReason.VERIFY):
            latest = Checkpoint.objects.order_by("-last_seq", "-signed_at").first()
            if latest is not None and (latest.first_seq, latest.last_seq) == (first_seq, last_seq):
                return None
        checkpoint = Checkpoint(
            first_seq=first_seq,
            last_seq=last_seq,
            last_hash=last_hash,
            events=last_seq - first_seq + 1,  # the chain is gapless (verification checks it)
            signed_at=now,
            reason=reason,
            key_id=key.key_id,
        )
        checkpoint.signature = key.sign(_signed_text(checkpoint.payload()))
        checkpoint.save(force_insert=True)
    _witness(checkpoint)
    return checkpoint


def checkpoint_adopt() -> Checkpoint | None:
    """At start: a log written before kb signed checkpoints gets its first one now (nothing when the log is
    empty or already has one). Its events, unsigned purges included, are vouched for by the hash chain alone."""
    if Checkpoint.objects.exists() or not AuditEvent.objects.exists():
        return None
    return checkpoint_make(reason=CheckpointReason.START)


def _witness(checkpoint: Checkpoint) -> bool:
    try:
        witness_append(checkpoint.payload(), checkpoint.signature)
    except OSError as error:
        # The row is signed and kept; the next verification appends what the witness is missing.
        logger.error(
            "could not append checkpoint #%s to the audit witness %s (%s): verification will add it once the "
            "folder is writable",
            checkpoint.last_seq,
            settings.KB_AUDIT_WITNESS_DIR,
            error,
        )
        return False
    return True


def _checkpoint_soon() -> None:
    """After the commit of every KB_AUDIT_CHECKPOINT_EVERY_EVENTS-th event: a worker signs the head.

    Queued, not signed here, because the event may be an exchange: the ask path pays one broker message
    every N events instead of a signature, a row and an fsync."""
    from kb.audit.tasks import checkpoint_sign

    try:
        # No publish retries: with the broker down an answer must not wait for it (beat catches up).
        checkpoint_sign.apply_async((CheckpointReason.EVENTS,), retry=False)
    except Exception:  # the broker is down: beat's time cadence signs the head later
        logger.warning(
            "could not queue an audit checkpoint; beat signs one within %ss", settings.KB_AUDIT_CHECKPOINT_EVERY_S
        )


def _purge_claim(data: Mapping[str, Any]) -> bytes:
    """What a purge event's signature covers: the range it removed, the anchor it left, and the key."""
    claim = {name: data.get(name) for name in PURGE_SIGNED_FIELDS}
    return _signed_text({"purge": claim, "key_id": data.get("key_id")})


# --- verification -----------------------------------------------------------------------------------------


@dataclass
class Problem:
    """Something verification found: where (an event number, when there is one) and what."""

    seq: int | None
    text: str

    def line(self) -> str:
        return f"at event #{self.seq}: {self.text}" if self.seq is not None else self.text


@dataclass
class ChainReport:
    ok: bool
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str = ""
    broken_seq: int | None = None
    reason: str = ""
    problems: list[Problem] = field(default_factory=list)
    checkpoint: dict | None = None  # the newest signed checkpoint the log was checked against
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        if self.ok:
            if not self.rows:
                return "OK: the audit log is empty."
            text = f"OK: {self.rows:,} events verified (#{self.first_seq}–#{self.last_seq}); last hash {self.last_hash}"
            if self.checkpoint:
                text += (
                    f"; agrees with the signed checkpoint of #{self.checkpoint['first_seq']}–"
                    f"#{self.checkpoint['last_seq']} ({self.checkpoint['signed_at'][:19].replace('T', ' ')} UTC)"
                )
            else:
                text += "; no signed checkpoint yet"
            return text + "".join(f"\nNote: {note}" for note in self.notes)
        where = f"at event #{self.broken_seq}" if self.broken_seq is not None else "in the witness"
        lines = [f"BROKEN {where}: {self.reason}"]
        lines += [f"- {problem.line()}" for problem in self.problems[1:]]
        return "\n".join(lines)

    def add(self, seq: int | None, text: str) -> None:
        self.problems.append(Problem(seq, text))

    def conclude(self) -> ChainReport:
        """Order the problems by event (unplaced ones last); the first is the one named in the headline."""
        self.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
        if self.problems:
            self.ok, self.broken_seq, self.reason = False, self.problems[0].seq, self.problems[0].text
        return self


def _when(checkpoint: Mapping[str, Any]) -> str:
    return f"signed {checkpoint['signed_at'][:19].replace('T', ' ')} UTC"


def _checkpoints(report: ChainReport, key: SigningKey, witness: Path | None) -> tuple[list[dict], list[Checkpoint]]:
    """The authentic checkpoints (good signature, from the witness or the database), and the database's good
    ones that the witness lacks. Bad signatures, unreadable witness lines and witnessed checkpoints missing
    from the database are reported."""
    witnessed: dict[str, dict] = {}
    for line in witness_read(witness):
        if line.checkpoint is None:
            report.add(None, f"witness line {line.source} cannot be read: {line.error}")
        elif not key.verifies(_signed_text(line.checkpoint), line.signature):
            report.add(
                line.checkpoint.get("last_seq"),
                f"witness line {line.source} (checkpoint of #{line.checkpoint.get('last_seq')}, "
                f"{_when(line.checkpoint)}) has a signature that does not verify with audit key {key.key_id}: "
                "the line was altered, or written with another key",
            )
        else:
            witnessed[line.signature] = line.checkpoint
    authentic = list(witnessed.values())
    unwitnessed = []
    stored = set()
    for checkpoint in Checkpoint.objects.order_by("last_seq", "signed_at"):
        stored.add(checkpoint.signature)
        payload = checkpoint.payload()
        if not key.verifies(_signed_text(payload), checkpoint.signature):
            report.add(
                checkpoint.last_seq,
                f"checkpoint {checkpoint.pk} in the database (#{checkpoint.first_seq}–#{checkpoint.last_seq}) is "
                f"not signed by audit key {key.key_id}: it was forged or altered",
            )
        elif checkpoint.signature not in witnessed:
            unwitnessed.append(checkpoint)
            authentic.append(payload)
    for signature, payload in witnessed.items():
        if signature not in stored:
            report.add(
                payload["last_seq"],
                f"the checkpoint of #{payload['first_seq']}–#{payload['last_seq']} ({_when(payload)}) is in the "
                "witness but missing from the database: checkpoint rows were deleted",
            )
    authentic.sort(key=lambda c: (c["last_seq"], c["signed_at"]))
    return authentic, unwitnessed


def _anchors(report: ChainReport, key: SigningKey, adopted: dict | None) -> set[tuple[int, str]]:
    """Where signed purges cut the chain: (first kept seq, hash of the last deleted event). An unsigned purge
    is reported, unless the checkpoint signed at the first start with signing (`adopted`) covers it: a purge
    from before signing existed, whose place in the chain that checkpoint's hash fixes."""
    anchors = set()
    for seq, data in AuditEvent.objects.filter(kind=AuditKind.PURGE).values_list("seq", "data"):
        signature = data.get("signature")
        legacy = signature is None and adopted is not None and seq <= adopted["last_seq"]
        if legacy or (isinstance(signature, str) and key.verifies(_purge_claim(data), signature)):
            anchors.add((data.get("first_kept_seq"), data.get("anchor_hash")))
        else:
            report.add(
                seq,
                f"purge event #{seq} (events #{data.get('first_deleted_seq')}–#{data.get('last_deleted_seq')}) "
                f"{'carries no signature' if signature is None else 'has a signature that does not verify'}: "
                "a purge written without the purge key is a forgery",
            )
    return anchors


def _walk(report: ChainReport, anchors: set[tuple[int, str]], pinned: dict[int, dict]) -> None:
    """Recompute every hash and link in seq order, and compare each event a signed checkpoint ends at with the
    hash it signed. Stops at the first event that does not verify.

    The oldest event links to the genesis value (seq 1) or to the anchor a signed purge recorded when it
    removed the events before it.
    """
    expected_prev = ""
    matched: int | None = None  # the newest checkpointed event that still matches
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
                report.add(
                    seq - 1,
                    f"event #{seq - 1} and any before it were removed without a purge record signed by the purge key",
                )
                return
        elif seq != report.last_seq + 1:  # type: ignore[operator]
            missing = report.last_seq + 1  # type: ignore[operator]
            gap = f"#{missing}" if seq == missing + 1 else f"#{missing}–#{seq - 1}"
            report.add(missing, f"event {gap} is missing")
            return
        if prev_hash != expected_prev:
            report.add(seq, "its prev_hash is not the hash of the event before it")
            return
        if chain.row_hash(row) != hash_:
            report.add(seq, "its content does not match its hash: the event was changed")
            return
        signed = pinned.get(seq)
        if signed is not None:
            if signed["last_hash"] != hash_:
                since = f"after #{matched}, the last signed event that still matches" if matched else "from the start"
                report.add(
                    seq,
                    f"its hash differs from the one in the checkpoint {_when(signed)}: the chain was rewritten "
                    f"({since}) and re-hashed to look whole",
                )
                return
            matched = seq
        expected_prev = hash_
        report.rows += 1
        report.last_seq, report.last_hash = seq, hash_


def _verify(key: SigningKey, witness: Path | None) -> tuple[ChainReport, list[Checkpoint]]:
    report = ChainReport(ok=True)
    authentic, unwitnessed = _checkpoints(report, key, witness)
    adopted = next((c for c in authentic if c.get("reason") == CheckpointReason.START), None)
    anchors = _anchors(report, key, adopted)
    _walk(report, anchors, {c["last_seq"]: c for c in authentic})
    if authentic:
        newest = report.checkpoint = authentic[-1]
        with connection.cursor() as cursor:
            cursor.execute("SELECT max(seq) FROM audit_auditevent")
            (head,) = cursor.fetchone()
        if head is None or head < newest["last_seq"]:
            gone = (head or newest["first_seq"] - 1) + 1
            ends = f"ends at #{head}" if head is not None else "is empty"
            span = f"#{gone}" if gone == newest["last_seq"] else f"#{gone}–#{newest['last_seq']}"
            report.add(
                gone,
                f"the log {ends}, but the checkpoint {_when(newest)} covers #{newest['first_seq']}–"
                f"#{newest['last_seq']}: events {span} were removed from the end",
            )
    return report.conclude(), unwitnessed


def chain_verify(*, triggered_by: str = "", witness: Path | None = None) -> ChainReport:
    """Verify the whole chain against the signed checkpoints, record the result (audit page, /metrics), log an
    error when it is broken, and sign the verified head when it is whole.

    `witness`: a copy of the witness to check against (a file or folder) instead of KB_AUDIT_WITNESS_DIR.
    """
    started = timezone.now()
    key = signing_key()
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            # One snapshot for the checkpoints, the purge anchors, the walk and the head.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        report, unwitnessed = _verify(key, witness)
    if witness is None:
        for checkpoint in unwitnessed:  # signed by kb, but the witness write had failed
            if _witness(checkpoint):
                report.notes.append(
                    f"the checkpoint of #{checkpoint.last_seq} ({checkpoint.signed_at:%Y-%m-%d %H:%M} UTC) was "
                    "missing from the witness and has been appended"
                )
    newest = report.checkpoint
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
        checkpoint_seq=newest["last_seq"] if newest else None,
        checkpoint_signed_at=dt.datetime.fromisoformat(newest["signed_at"]) if newest else None,
    )
    if report.ok:
        logger.info("audit chain verified: %s", report.message())
        if report.first_seq is not None and report.last_seq is not None and witness is None:
            checkpoint_make(reason=CheckpointReason.VERIFY, head=(report.first_seq, report.last_seq, report.last_hash))
    else:
        logger.error("AUDIT CHAIN BROKEN: %s", report.message())
    return report


@dataclass
class CheckpointStatus:
    """The newest checkpoint for the audit page: what it covers, and whether its signature and witness hold."""

    checkpoint: Checkpoint
    signature_ok: bool
    witnessed: bool
    key_id: str


def checkpoint_status() -> CheckpointStatus | None:
    checkpoint = Checkpoint.objects.order_by("-last_seq", "-signed_at").first()
    if checkpoint is None:
        return None
    key = signing_key()
    payload = checkpoint.payload()
    return CheckpointStatus(
        checkpoint=checkpoint,
        signature_ok=key.verifies(_signed_text(payload), checkpoint.signature),
        witnessed=witness_holds(payload, checkpoint.signature),
        key_id=key.key_id,
    )


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
    key = signing_key()  # the purge signs what it cut: without the key file there is no purge
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
            record = {
                "cutoff": cutoff,
                "retention_days": settings.KB_AUDIT_RETENTION_DAYS,
                "deleted": deleted,
                "first_deleted_seq": oldest,
                "last_deleted_seq": end,
                "first_kept_seq": end + 1,
                "anchor_hash": anchor,
                "key_id": key.key_id,
            }
            record["signature"] = key.sign(_purge_claim(record))
            event = _append(
                kind=AuditKind.PURGE,
                content=chain.plain(record),
                user=_user_or_none(actor) or request_actor(),
                exchange_id=None,
                document_ids=[],
                after=(end, anchor),  # this batch may have removed every event
            )
        result.deleted += deleted
        result.purge_events.append(event.seq)
    # Verification results older than the retention period go too, except failures: they stay as evidence.
    ChainCheck.objects.filter(ok=True, finished_at__lt=cutoff).delete()
    if result.deleted:
        checkpoint_make(reason=CheckpointReason.PURGE)
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
    checkpoint_make(reason=CheckpointReason.EXPORT)  # the log as it stood when the export was recorded
    return ExportStream(filters=filters, format=format, export_seq=event.seq, trailer=trailer)
