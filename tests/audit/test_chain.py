"""The hash chain: what is hashed, that the database keeps it append-only, and that verification finds any
change, removal or rewrite at the event where it happened."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kb.audit import chain, services
from kb.audit.models import AuditEvent, AuditKind, ChainCheck
from tests.audit.conftest import record_some, tamper
from tests.factories import UserFactory


def test_events_form_a_chain_from_the_genesis_value(empty_log, employee):
    first, second, third = record_some(3, actor=employee)
    assert [first.seq, second.seq, third.seq] == [1, 2, 3]
    assert first.prev_hash == chain.GENESIS
    assert second.prev_hash == first.hash and third.prev_hash == second.hash
    assert third.actor_id == employee.pk and third.actor_username == employee.username
    assert services.chain_verify().ok


def test_the_hash_is_sha256_of_the_previous_hash_and_canonical_json(empty_log, employee):
    event = services.audit_record(
        kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 7, "rating": "up", "comment": "très «bien» ✓"}
    )
    stored = AuditEvent.objects.get(seq=event.seq)
    content = {
        "actor_id": employee.pk,
        "actor_username": employee.username,
        "created_at": stored.created_at.isoformat(timespec="microseconds"),
        "data": {"comment": "très «bien» ✓", "exchange_id": 7, "rating": "up"},
        "document_ids": [],
        "exchange_id": 7,
        "kind": "feedback",
        "seq": event.seq,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert '"très «bien» ✓"' in text
    assert stored.hash == hashlib.sha256((stored.prev_hash + text).encode()).hexdigest()


# Floats, large numbers, NUL and broken surrogates: what goes in is what comes back and verifies.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_is_stored_exactly_as_hashed(db, data):
    event = services.audit_record(kind=AuditKind.EXPORT, data=data)
    stored = AuditEvent.objects.get(seq=event.seq)
    assert stored.computed_hash() == stored.hash
    assert stored.data == event.data


def test_credentials_never_reach_the_log(empty_log, settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-api03-supersecretvalue"
    event = services.audit_record(
        kind=AuditKind.EXPORT,
        data={
            "error": "401 for key sk-ant-api03-supersecretvalue",
            "nested": [{"header": "Authorization: Bearer kb_" + "x" * 43}],
            "token": "kb_" + "A1b2" * 11,
        },
    )
    text = chain.canonical_json(AuditEvent.objects.get(seq=event.seq).data)
    assert "supersecret" not in text and "kb_AAA" not in text and "xxxxxxxx" not in text
    assert text.count(chain.REDACTED) == 3


def test_an_unknown_kind_is_refused(db):
    with pytest.raises(ValueError, match="unknown audit event kind 'gossip'"):
        services.audit_record(kind="gossip", data={})


def test_the_database_refuses_update_and_delete(empty_log):
    (event,) = record_some(1)
    attempts = [
        lambda: AuditEvent.objects.filter(seq=event.seq).update(actor_username="someone else"),
        lambda: AuditEvent.objects.filter(seq=event.seq).delete(),
        lambda: event.save(),
        lambda: connection.cursor().execute("UPDATE audit_auditevent SET data = '{}' WHERE seq = %s", [event.seq]),
        lambda: connection.cursor().execute("DELETE FROM audit_auditevent"),
    ]
    for attempt in attempts:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            attempt()
    assert AuditEvent.objects.get(seq=event.seq).hash == event.hash
    assert services.chain_verify().ok


def test_a_second_event_naming_the_same_predecessor_is_refused(empty_log):
    (event,) = record_some(1)
    fork = AuditEvent(
        seq=99, kind=AuditKind.EXPORT, created_at=event.created_at, data={}, prev_hash=event.prev_hash, hash="f" * 64
    )
    with pytest.raises(DatabaseError), transaction.atomic():
        fork.save(force_insert=True)


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_fork_the_chain():
    threads, per_thread = 12, 8
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    before = AuditEvent.objects.count()

    def write(worker: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                services.audit_record(kind=AuditKind.EXPORT, data={"worker": worker, "n": n})
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert len(seqs) == before + threads * per_thread
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gapless
    assert services.chain_verify().ok


# --- tampering ----------------------------------------------------------------------------------------------

CHANGES = {
    "seq": "seq = seq + 1000000",
    "kind": "kind = CASE WHEN kind = 'export' THEN 'feedback' ELSE 'export' END",
    "created_at": "created_at = created_at + interval '1 microsecond'",
    "actor_id": "actor_id = coalesce(actor_id, 0) + 1",
    "actor_username": "actor_username = actor_username || 'x'",
    "exchange_id": "exchange_id = coalesce(exchange_id, 0) + 1",
    "document_ids": "document_ids = array_append(document_ids, 99)",
    "data": """data = data || '{"rating": "down"}'""",
    "prev_hash": "prev_hash = translate(prev_hash, '0123456789abcdef', '123456789abcdef0')",
    "hash": "hash = translate(hash, '0123456789abcdef', '123456789abcdef0')",
}


class _Undo(Exception):
    """Raised to roll a tampering experiment back, carrying what verification said."""


def verify_after(sql: str, params=()) -> services.ChainReport:
    try:
        with transaction.atomic():
            tamper(sql, params)
            raise _Undo(services.chain_verify())
    except _Undo as undo:
        return undo.args[0]


@pytest.fixture
def mixed_chain(empty_log, employee):
    admin = UserFactory(username="alice")
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 11, "rating": "up"})
    services.audit_record(kind=AuditKind.DOCUMENT_DELETE, actor=admin, data={"document_id": 5, "title": "Policy"})
    services.audit_record(kind=AuditKind.EXPORT, data={"format": "csv", "filters": {}})
    services.audit_record(
        kind=AuditKind.EXCHANGE, actor=employee, data={"exchange_id": 12, "answer": "Yes [1].", "cost_usd": 0.0012}
    )
    services.audit_record(kind=AuditKind.ACCESS_GROUPS, actor=admin, data={"document_id": 5, "after": ["HR"]})
    return list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))


@pytest.mark.parametrize("column", CHANGES)
def test_changing_any_column_of_any_event_breaks_verification_at_that_event(mixed_chain, column):
    assert services.chain_verify().ok
    for seq in mixed_chain:
        report = verify_after(f"UPDATE audit_auditevent SET {CHANGES[column]} WHERE seq = %s", [seq])
        assert not report.ok, (column, seq)
        assert report.broken_seq == seq, (column, seq, report.message())


def _mutations(text: str):
    """Every one-character change of `text` (to a neighbouring character)."""
    for i, char in enumerate(text):
        for other in {chr(ord(char) ^ 1), chr(ord(char) ^ 2)}:
            if other.isprintable() and other != char:
                yield i, text[:i] + other + text[i + 1 :]


def test_changing_any_byte_of_any_text_column_breaks_verification(mixed_chain):
    checked = 0
    for seq in (mixed_chain[0], mixed_chain[3]):
        row = AuditEvent.objects.get(seq=seq)
        with connection.cursor() as cursor:
            cursor.execute("SELECT data::text FROM audit_auditevent WHERE seq = %s", [seq])
            (data_text,) = cursor.fetchone()
        for column, value in (("data", data_text), ("actor_username", row.actor_username), ("hash", row.hash)):
            for position, changed in _mutations(value):
                if column == "data":
                    try:
                        if json.loads(changed) == row.data:
                            continue  # the same JSON written differently (e.g. spacing): not a change
                    except ValueError:
                        continue  # not JSON: PostgreSQL would refuse it anyway
                cast = "::jsonb" if column == "data" else ""
                report = verify_after(f"UPDATE audit_auditevent SET {column} = %s{cast} WHERE seq = %s", [changed, seq])
                assert not report.ok and report.broken_seq == seq, (column, position, changed)
                checked += 1
    assert checked > 200


def test_removing_an_event_in_the_middle_names_it(mixed_chain):
    report = verify_after("DELETE FROM audit_auditevent WHERE seq = %s", [mixed_chain[2]])
    assert report.broken_seq == mixed_chain[2] and "missing" in report.reason


def test_removing_the_oldest_events_without_a_purge_record_is_caught(mixed_chain):
    report = verify_after("DELETE FROM audit_auditevent WHERE seq <= %s", [mixed_chain[1]])
    assert not report.ok and report.broken_seq == mixed_chain[1]
    assert "without a purge record" in report.reason


def test_removing_the_newest_events_after_a_check_is_caught(mixed_chain):
    assert services.chain_verify().ok
    report = verify_after("DELETE FROM audit_auditevent WHERE seq >= %s", [mixed_chain[3]])
    assert not report.ok and report.broken_seq == mixed_chain[3]
    assert f"events #{mixed_chain[3]}–#{mixed_chain[-1]} were removed from the end" in report.reason


def test_rewriting_the_chain_with_fresh_hashes_after_a_check_is_caught(mixed_chain):
    assert services.chain_verify().ok
    # Rewrite the last event's content and recompute its hash: every link still holds.
    last = AuditEvent.objects.get(seq=mixed_chain[-1])
    last.data = {**last.data, "after": ["Everyone"]}
    rewritten = last.computed_hash()
    report = verify_after(
        "UPDATE audit_auditevent SET data = %s::jsonb, hash = %s WHERE seq = %s",
        [json.dumps(last.data), rewritten, last.seq],
    )
    assert not report.ok and report.broken_seq == last.seq and "rewritten" in report.reason


def test_audit_verify_prints_ok_with_the_count(mixed_chain, capsys):
    call_command("audit_verify")
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {len(mixed_chain)} events verified (#{mixed_chain[0]}–#{mixed_chain[-1]})")
    assert ChainCheck.objects.get().triggered_by == "command"


def test_audit_verify_names_the_first_broken_event_and_exits_1(mixed_chain):
    tamper("UPDATE audit_auditevent SET data = data || '{\"x\": 1}' WHERE seq IN (%s, %s)", mixed_chain[1:3])
    with pytest.raises(CommandError) as failure:
        call_command("audit_verify")
    assert failure.value.returncode == 1
    assert str(failure.value).startswith(f"BROKEN at event #{mixed_chain[1]}: its content does not match its hash")


def test_the_periodic_check_logs_and_alerts_through_metrics(mixed_chain, client, caplog):
    from kb.audit.tasks import chain_verify

    assert chain_verify() is True
    metrics = client.get("/metrics").content.decode()
    assert "kb_audit_chain_ok 1.0" in metrics and "kb_audit_verify_failures_total 0.0" in metrics
    assert f"kb_audit_chain_events {len(mixed_chain)}.0" in metrics

    tamper("UPDATE audit_auditevent SET actor_username = 'mallory' WHERE seq = %s", [mixed_chain[1]])
    assert chain_verify() is False
    assert any(
        record.levelname == "ERROR" and f"BROKEN at event #{mixed_chain[1]}" in record.getMessage()
        for record in caplog.records
    )
    metrics = client.get("/metrics").content.decode()
    assert "kb_audit_chain_ok 0.0" in metrics and "kb_audit_verify_failures_total 1.0" in metrics
