"""Retention: old events go, the purge records where it cut, the rest still verifies; a legal hold stops it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from kb.audit import services
from kb.audit.models import AuditEvent, AuditKind, ChainCheck
from tests.audit.conftest import record_some, tamper


def as_of(event: AuditEvent, settings) -> dt.datetime:
    """The moment at which `event` is the oldest one inside the retention period."""
    return event.created_at + dt.timedelta(days=settings.KB_AUDIT_RETENTION_DAYS)


def test_a_purge_removes_the_old_events_and_the_rest_still_verifies(empty_log, settings):
    events = record_some(6)
    result = services.audit_purge(now=as_of(events[4], settings))
    assert result.deleted == 4
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [5, 6, 7]
    (purge,) = AuditEvent.objects.filter(kind=AuditKind.PURGE)
    assert purge.seq == result.purge_events[0] == 7
    assert purge.data["first_deleted_seq"] == 1 and purge.data["last_deleted_seq"] == 4
    assert purge.data["first_kept_seq"] == 5 and purge.data["deleted"] == 4
    assert purge.data["anchor_hash"] == events[3].hash == AuditEvent.objects.get(seq=5).prev_hash
    report = services.chain_verify()
    assert report.ok and report.first_seq == 5 and report.rows == 3


def test_purges_in_batches_each_record_their_cut_and_later_purges_chain_on(empty_log, settings, monkeypatch):
    monkeypatch.setattr(services, "PURGE_BATCH_ROWS", 3)
    events = record_some(8)
    result = services.audit_purge(now=as_of(events[7], settings))
    assert result.deleted == 7 and len(result.purge_events) == 3  # 3 + 3 + 1
    assert services.chain_verify().ok
    # A later purge removes the earlier purge events too; its own record anchors what is left.
    later = record_some(2)
    result = services.audit_purge(now=as_of(later[1], settings))
    assert AuditEvent.objects.order_by("seq").first().seq == later[1].seq
    assert services.chain_verify().ok


def test_purging_everything_leaves_the_purge_event_anchored(empty_log, settings):
    events = record_some(3)
    services.audit_purge(now=events[-1].created_at + dt.timedelta(days=settings.KB_AUDIT_RETENTION_DAYS, seconds=1))
    (only,) = AuditEvent.objects.all()
    assert only.kind == AuditKind.PURGE and only.data["first_kept_seq"] == only.seq == 4
    assert services.chain_verify().ok


def test_a_forged_anchor_does_not_verify(empty_log, settings):
    events = record_some(4)
    services.audit_purge(now=as_of(events[2], settings))
    tamper("UPDATE audit_auditevent SET prev_hash = %s WHERE seq = 3", ["0" * 63 + "1"])
    report = services.chain_verify()
    assert not report.ok and report.broken_seq == 2


def test_nothing_to_purge_records_nothing(empty_log, settings):
    record_some(2)
    result = services.audit_purge()
    assert result.deleted == 0 and result.purge_events == []
    assert "Nothing to purge: no event is older than 400 days" in result.message()
    assert not AuditEvent.objects.filter(kind=AuditKind.PURGE).exists()


def test_a_purge_never_destroys_events_that_do_not_verify(empty_log, settings):
    events = record_some(4)
    tamper("UPDATE audit_auditevent SET data = '{}' WHERE seq = 2")
    with pytest.raises(services.ChainBroken, match="event #2 does not verify"):
        services.audit_purge(now=as_of(events[3], settings))
    assert AuditEvent.objects.count() == 4


def test_the_setting_holds_every_purge(empty_log, settings):
    settings.KB_AUDIT_LEGAL_HOLD = True
    events = record_some(3)
    with pytest.raises(services.LegalHoldActive, match=r"KB_AUDIT_LEGAL_HOLD=true\): nothing was purged"):
        services.audit_purge(now=as_of(events[2], settings))
    assert AuditEvent.objects.count() == 3


def test_a_legal_hold_placed_by_compliance_stops_the_purge_until_lifted(empty_log, settings, compliance):
    events = record_some(3)
    services.legal_hold_set(active=True, reason="Case 2026-17 (Smith v. Acme)", actor=compliance)
    with pytest.raises(CommandError) as refused:
        call_command("audit_purge")
    assert refused.value.returncode == 1
    assert "Case 2026-17 (Smith v. Acme)): nothing was purged" in str(refused.value)
    with pytest.raises(services.LegalHoldActive):
        services.audit_purge(now=as_of(events[2], settings))
    services.legal_hold_set(active=False, reason="", actor=compliance)
    assert services.audit_purge(now=as_of(events[2], settings)).deleted == 2
    holds = AuditEvent.objects.filter(kind=AuditKind.LEGAL_HOLD).order_by("seq")
    assert [(e.data["active"], e.actor_username) for e in holds] == [(True, compliance.username)] * 1 + [
        (False, compliance.username)
    ]


def test_a_hold_needs_a_reason_and_cannot_be_placed_twice(empty_log, compliance):
    with pytest.raises(services.AuditError, match="Say why"):
        services.legal_hold_set(active=True, reason="  ", actor=compliance)
    services.legal_hold_set(active=True, reason="Audit request", actor=compliance)
    with pytest.raises(services.AuditError, match="already on"):
        services.legal_hold_set(active=True, reason="Again", actor=compliance)


def test_compliance_places_and_lifts_the_hold_on_the_audit_page(empty_log, client, compliance):
    client.force_login(compliance)
    response = client.post(reverse("audit_legal_hold"), {"active": "on", "reason": "Regulator inquiry"}, follow=True)
    assert "Legal hold placed" in response.content.decode()
    page = client.get(reverse("audit_home")).content.decode()
    assert "Regulator inquiry" in page and "Lift the legal hold" in page
    response = client.post(reverse("audit_legal_hold"), {"active": "on", "reason": "Another"}, follow=True)
    assert "The legal hold is already on." in response.content.decode()
    client.post(reverse("audit_legal_hold"), {"active": "off"})
    assert not services.legal_hold_status().active


def test_the_purge_command_says_what_it_did(empty_log, capsys):
    record_some(2)
    call_command("audit_purge")
    assert capsys.readouterr().out.startswith("Nothing to purge: no event is older than 400 days")


def test_the_beat_task_skips_under_a_hold_and_says_why(empty_log, settings, caplog):
    from kb.audit.tasks import audit_purge

    settings.KB_AUDIT_LEGAL_HOLD = True
    caplog.set_level("INFO", logger="kb.audit.tasks")
    assert audit_purge() == 0
    assert "audit purge skipped: A legal hold is on" in caplog.text


def test_old_verification_results_go_but_failures_stay(empty_log, settings):
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ChainCheck.objects.create(started_at=old, finished_at=old, ok=True)
    ChainCheck.objects.create(started_at=old, finished_at=old, ok=False, broken_seq=3, message="BROKEN")
    services.audit_purge()
    assert list(ChainCheck.objects.values_list("ok", flat=True)) == [False]
