"""The tamper drill: what someone with the database owner's rights (but not the signing key file) can do to the
log, each found by `manage.py audit_verify` and on the compliance page, with what happened and where.

The log: 30 events, signed checkpoints at #10, #20 and #30 (as the worker signs them every N events).
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from kb.audit import chain, services, tasks
from kb.audit.models import AuditEvent, AuditKind, ChainCheck, Checkpoint
from tests.audit.conftest import TRIGGER, record_some, tamper


@pytest.fixture
def drill_log(empty_log, employee):
    for _ in range(3):
        record_some(10, actor=employee)
        tasks.checkpoint_sign("events")
    assert [c.last_seq for c in Checkpoint.objects.order_by("last_seq")] == [10, 20, 30]
    assert services.chain_verify().ok
    return employee


# Each tampering takes the event numbers it works on (the bench drill runs them on a longer log).


def update_a_middle_event(seq: int = 15):
    tamper("""UPDATE audit_auditevent SET data = data || '{"rating": "down"}' WHERE seq = %s""", [seq])


def delete_a_middle_event(seq: int = 15):
    tamper("DELETE FROM audit_auditevent WHERE seq = %s", [seq])


def truncate_the_last_events(from_seq: int = 26):
    # As in the outside test: the purge switch, which any session of the owner role can set.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL kb.audit_purge = 'on'")
        cursor.execute("DELETE FROM audit_auditevent WHERE seq >= %s", [from_seq])
        cursor.execute("SET LOCAL kb.audit_purge = 'off'")


def delete_the_check_rows_too(from_seq: int = 28):
    """Remove the end of the log and every trace of the checks that had covered it."""
    tamper("DELETE FROM audit_auditevent WHERE seq >= %s", [from_seq])
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_chaincheck")
        cursor.execute("DELETE FROM audit_checkpoint")


def forge_a_purge(through: int = 10):
    """Delete #1-#10 and append a purge event with the right anchor: the chain itself holds no secret."""
    anchor = AuditEvent.objects.get(seq=through + 1).prev_hash
    tamper("DELETE FROM audit_auditevent WHERE seq <= %s", [through])
    services.audit_record(
        kind=AuditKind.PURGE,
        data={
            "cutoff": "2020-01-01T00:00:00+00:00",
            "retention_days": 400,
            "deleted": through,
            "first_deleted_seq": 1,
            "last_deleted_seq": through,
            "first_kept_seq": through + 1,
            "anchor_hash": anchor,
            "key_id": "0123456789abcdef",
            "signature": base64.b64encode(b"\x01" * 64).decode(),
        },
    )


def replace_the_table_with_a_rehashed_copy(seq: int = 15):
    """Change #15, then recompute every hash from the genesis value on: every link holds again."""
    rows = list(AuditEvent.objects.order_by("seq"))
    prev = chain.GENESIS
    for row in rows:
        if row.seq == seq:
            row.data = {**row.data, "rating": "down"}
        row.prev_hash, row.hash = prev, chain.event_hash(prev, row.content())
        prev = row.hash
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE audit_auditevent DISABLE TRIGGER {TRIGGER}")
        cursor.execute("DELETE FROM audit_auditevent")
        AuditEvent.objects.bulk_create(rows, batch_size=2000)
        cursor.execute(f"ALTER TABLE audit_auditevent ENABLE TRIGGER {TRIGGER}")


# What each tampering does, and what verification must say: (headline event, headline text, further lines).
DRILLS = {
    "update a middle event": (update_a_middle_event, 15, "its content does not match its hash", []),
    "delete a middle event": (delete_a_middle_event, 15, "event #15 is missing", []),
    "truncate the last events": (
        truncate_the_last_events,
        26,
        "the log ends at #25, but the checkpoint signed",
        ["events #26–#30 were removed from the end"],
    ),
    "delete the chain-check rows": (
        delete_the_check_rows_too,
        10,
        "the checkpoint of #1–#10",
        [
            "is in the witness but missing from the database: checkpoint rows were deleted",
            "at event #28: the log ends at #27",
            "events #28–#30 were removed from the end",
        ],
    ),
    "forge a purge": (
        forge_a_purge,
        10,
        "event #10 and any before it were removed without a purge record signed by the purge key",
        ["at event #31: purge event #31 (events #1–#10) has a signature that does not verify"],
    ),
    "replace the table with a re-hashed copy": (
        replace_the_table_with_a_rehashed_copy,
        20,
        "its hash differs from the one in the checkpoint signed",
        ["the chain was rewritten (after #10, the last signed event that still matches)"],
    ),
}


@pytest.mark.parametrize("drill", DRILLS)
def test_every_tampering_is_found_with_what_and_where(drill_log, client, compliance, drill):
    apply, seq, headline, more = DRILLS[drill]
    apply()
    with pytest.raises(CommandError) as found:
        call_command("audit_verify")
    message = str(found.value)
    assert found.value.returncode == 1
    assert message.startswith(f"BROKEN at event #{seq}: ") and headline in message.splitlines()[0], message
    for text in more:
        assert text in message, message

    client.force_login(compliance)
    page = client.get(reverse("audit_home")).content.decode()
    assert "Broken" in page and f'href="/audit/{seq}/">event #{seq}</a>' in page
    assert headline in page


def test_deleting_the_check_rows_after_a_good_check_hides_nothing(drill_log):
    """The outside test's sequence: a check covered the end; then the end and the check rows were deleted."""
    assert ChainCheck.objects.filter(ok=True).exists()
    delete_the_check_rows_too()
    assert not Checkpoint.objects.exists() and not ChainCheck.objects.exists()
    report = services.chain_verify()
    assert not report.ok and report.checkpoint["last_seq"] == 30  # the witness is the reference


def test_a_purge_signed_with_the_key_verifies_and_a_forged_one_does_not(drill_log, settings):
    events = list(AuditEvent.objects.order_by("seq")[:5])
    result = services.audit_purge(now=events[4].created_at + dt.timedelta(days=settings.KB_AUDIT_RETENTION_DAYS))
    (purge,) = AuditEvent.objects.filter(seq=result.purge_events[0])
    assert purge.data["signature"] and purge.data["key_id"] == services.signing_key().key_id
    report = services.chain_verify()
    assert report.ok and report.first_seq == 5
    # The purge also signed a checkpoint of what it left.
    newest = Checkpoint.objects.order_by("-last_seq").first()
    assert (newest.reason, newest.first_seq, newest.last_seq) == ("purge", 5, purge.seq)

    # The same event with its range widened (hashes recomputed, as a forger would): the signature no longer fits.
    data = {**purge.data, "first_deleted_seq": 1, "last_deleted_seq": 9}
    forged = AuditEvent(**{f: getattr(purge, f) for f in chain.ROW_FIELDS if f != "data"}, data=data)
    tamper(
        "UPDATE audit_auditevent SET data = %s::jsonb, hash = %s WHERE seq = %s",
        [json.dumps(data), forged.computed_hash(), purge.seq],
    )
    report = services.chain_verify()
    assert not report.ok
    assert f"purge event #{purge.seq} (events #1–#9) has a signature that does not verify" in report.message()


def test_the_purge_switch_alone_cannot_make_a_purge_that_verifies(drill_log):
    """Setting kb.audit_purge as the application could, then deleting and recording a purge without the key."""
    anchor = AuditEvent.objects.get(seq=6).prev_hash
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL kb.audit_purge = 'on'")
        cursor.execute("DELETE FROM audit_auditevent WHERE seq <= 5")
        cursor.execute("SET LOCAL kb.audit_purge = 'off'")
    services.audit_record(
        kind=AuditKind.PURGE,
        data={"first_deleted_seq": 1, "last_deleted_seq": 5, "first_kept_seq": 6, "anchor_hash": anchor, "deleted": 5},
    )
    report = services.chain_verify()
    assert not report.ok and report.broken_seq == 5
    assert "at event #31: purge event #31 (events #1–#5) carries no signature" in report.message()


def test_a_witness_line_whose_signature_fails_is_reported(drill_log, settings):
    (path,) = settings.KB_AUDIT_WITNESS_DIR.iterdir()
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["checkpoint"]["last_hash"] = "f" * 64  # what a rewrite would need the witness to say
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    report = services.chain_verify()
    assert not report.ok and report.broken_seq == 20
    assert f"witness line {path.name}:2 (checkpoint of #20" in report.reason
    assert "has a signature that does not verify with audit key" in report.reason


def test_a_checkpoint_row_forged_in_the_database_is_reported(drill_log):
    real = Checkpoint.objects.get(last_seq=30)
    Checkpoint.objects.create(
        first_seq=1,
        last_seq=40,
        last_hash="a" * 64,
        events=40,
        signed_at=real.signed_at,
        reason="time",
        key_id=real.key_id,
        signature=base64.b64encode(b"\x02" * 64).decode(),
    )
    report = services.chain_verify()
    assert not report.ok and report.broken_seq == 40
    assert "(#1–#40) is not signed by audit key" in report.reason


def test_a_checkpoint_the_witness_missed_is_appended_by_the_next_verification(drill_log, settings):
    (path,) = settings.KB_AUDIT_WITNESS_DIR.iterdir()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # as if the last append had failed (disk full)
    report = services.chain_verify()
    assert report.ok and "the checkpoint of #30" in report.message() and "has been appended" in report.message()
    assert len(path.read_text().splitlines()) == len(lines)
    assert services.chain_verify().ok


def test_verify_checks_against_a_copy_of_the_witness(drill_log, settings, tmp_path):
    """A compliance officer checks against their own copy (e.g. from a syslog host), lines prefixed by syslog."""
    (path,) = settings.KB_AUDIT_WITNESS_DIR.iterdir()
    copy = tmp_path / "syslog-copy.log"
    copy.write_text(
        "".join(f"Dec  2 06:00:00 kb kb-audit-checkpoint: {line}\n" for line in path.read_text().splitlines())
    )
    truncate_the_last_events()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_checkpoint")
    path.unlink()  # the machine's own witness is gone too
    with pytest.raises(CommandError) as found:
        call_command("audit_verify", witness=str(copy))
    assert "events #26–#30 were removed from the end" in str(found.value)


def test_the_every_n_events_checkpoint_is_queued_after_commit(
    empty_log, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.KB_AUDIT_CHECKPOINT_EVERY_EVENTS = 4
    queued = []
    monkeypatch.setattr("kb.audit.tasks.checkpoint_sign.apply_async", lambda args, retry: queued.append((*args, retry)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        record_some(9)
    assert queued == [("events", False), ("events", False)] and len(callbacks) == 2  # after #4 and #8
    tasks.checkpoint_sign("events")  # what the worker runs
    assert Checkpoint.objects.get().last_seq == 9
    assert tasks.checkpoint_sign("time") is None  # nothing new to sign


def test_the_time_cadence_is_scheduled_by_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry == {"task": "audit.checkpoint", "schedule": float(settings.KB_AUDIT_CHECKPOINT_EVERY_S)}
    assert tasks.checkpoint_sign.name == "audit.checkpoint"


def test_a_purge_from_before_signing_is_vouched_for_by_the_first_start_checkpoint(empty_log):
    """Upgrading: a log with an unsigned purge (all purges were, before signing) gets its first checkpoint at
    start, which fixes that purge's place in the chain; an unsigned purge written after it is still a forgery."""
    assert services.checkpoint_adopt() is None  # an empty log: nothing to adopt
    record_some(5)
    anchor = AuditEvent.objects.get(seq=4).prev_hash
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL kb.audit_purge = 'on'")
        cursor.execute("DELETE FROM audit_auditevent WHERE seq <= 3")
        cursor.execute("SET LOCAL kb.audit_purge = 'off'")
    services.audit_record(
        kind=AuditKind.PURGE,
        data={"first_deleted_seq": 1, "last_deleted_seq": 3, "first_kept_seq": 4, "anchor_hash": anchor, "deleted": 3},
    )
    adopted = services.checkpoint_adopt()
    assert (adopted.reason, adopted.first_seq, adopted.last_seq) == ("start", 4, 6)
    assert services.checkpoint_adopt() is None  # once only
    assert services.chain_verify().ok

    record_some(2)
    services.audit_record(kind=AuditKind.PURGE, data={"first_deleted_seq": 4, "last_deleted_seq": 5})
    report = services.chain_verify()
    assert (
        not report.ok
        and report.broken_seq == 9
        and "purge event #9 (events #4–#5) carries no signature" in report.reason
    )


def test_a_broker_outage_never_fails_the_event_that_asked_for_a_checkpoint(
    empty_log, settings, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    def broker_down(args, retry):
        raise ConnectionError("broker down")

    settings.KB_AUDIT_CHECKPOINT_EVERY_EVENTS = 2
    monkeypatch.setattr("kb.audit.tasks.checkpoint_sign.apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        record_some(2)
    assert AuditEvent.objects.count() == 2
    assert "could not queue an audit checkpoint; beat signs one within 300s" in caplog.text
