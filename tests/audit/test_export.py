"""Exports: CSV and JSON Lines that read back to the same rows, a manifest that describes the file, the
filters, the Compliance-only API (also under uvicorn), and an audit event for every export."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from kb.accounts.services import api_token_create
from kb.audit import chain, services
from kb.audit.export import MANIFEST_MARK, content_from_csv
from kb.audit.filters import AuditFilters
from kb.audit.models import AuditEvent, AuditKind
from tests.audit.conftest import tamper
from tests.factories import UserFactory

TRICKY = [
    'She said "no", then left',
    "line one\nline two\r\nline three\rend",
    "emoji 😀, CJK 社内規定, RTL עברית, combining é",
    '=HYPERLINK("http://evil.example","click")',
    "tab\tseparated; semi;colon, comma,,",
    "",
]


def exchange(user, n: int, question: str, *, outcome="answered", model="extractive", documents=(7,)) -> AuditEvent:
    return services.audit_record(
        kind=AuditKind.EXCHANGE,
        actor=user,
        data={
            "exchange_id": 100 + n,
            "question": question,
            "answer": f"{question[::-1]} [1]",
            "outcome": outcome,
            "model": model,
            "citations": [{"n": 1, "document_id": documents[0]}] if documents else [],
            "cost_usd": 0.000123,
        },
        document_ids=documents,
    )


@pytest.fixture
def tricky_log(empty_log, employee):
    admin = UserFactory(username="o'brien-admin")
    events = [exchange(employee, n, text) for n, text in enumerate(TRICKY)]
    events.append(services.audit_record(kind=AuditKind.DOCUMENT_DELETE, actor=admin, data={"document_id": 7}))
    return events


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def check_rows_match_the_log(rows: list[dict[str, str]], events: list[AuditEvent]) -> None:
    assert [int(row["seq"]) for row in rows] == [event.seq for event in events]
    for row, event in zip(rows, events, strict=True):
        stored = AuditEvent.objects.get(seq=event.seq)
        assert json.loads(row["data"]) == stored.data
        assert row["created_at"] == chain.timestamp(stored.created_at)
        assert row["actor_username"] == stored.actor_username and row["kind"] == stored.kind
        assert json.loads(row["document_ids"]) == stored.document_ids
        assert row["prev_hash"] == stored.prev_hash and row["hash"] == stored.hash
        # Anyone can check a row on its own with the rule in the manifest.
        assert chain.event_hash(row["prev_hash"], content_from_csv(row)) == row["hash"]
        if stored.kind == AuditKind.EXCHANGE:
            question = stored.data["question"]
            assert row["question"] == ("'" + question if question.startswith("=") else question)


def test_the_csv_reads_back_to_the_same_rows(tricky_log, tmp_path):
    out = tmp_path / "audit.csv"
    call_command("audit_export", format="csv", out=str(out))
    rows = csv_rows(out.read_bytes().decode("utf-8"))  # not read_text: it would translate \r and \r\n
    check_rows_match_the_log(rows, tricky_log)
    assert rows[1]["question"] == TRICKY[1] and rows[2]["question"] == TRICKY[2]  # newlines, unicode intact
    assert rows[3]["question"].startswith("'=HYPERLINK")  # not run as a formula by a spreadsheet

    manifest = json.loads((tmp_path / "audit.csv.manifest.json").read_text())
    data = out.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
    assert manifest["rows"] == len(tricky_log)
    assert (manifest["first_seq"], manifest["last_seq"]) == (tricky_log[0].seq, tricky_log[-1].seq)
    assert (manifest["first_hash"], manifest["last_hash"]) == (tricky_log[0].hash, tricky_log[-1].hash)
    assert manifest["export_seq"] == tricky_log[-1].seq + 1 and manifest["format"] == "csv"


def test_jsonl_lines_verify_on_their_own_and_link_into_the_chain(tricky_log, tmp_path, capsys):
    out = tmp_path / "audit.jsonl"
    call_command("audit_export", format="jsonl", out=str(out))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(tricky_log)
    previous = chain.GENESIS
    for line in lines:
        content = {key: value for key, value in line.items() if key not in ("prev_hash", "hash")}
        assert line["prev_hash"] == previous and chain.event_hash(previous, content) == line["hash"]
        previous = line["hash"]
    assert lines[2]["data"]["question"] == TRICKY[2]
    assert f"{len(tricky_log)} events (#1–#{len(tricky_log)}) written to {out}" in capsys.readouterr().out


def test_every_export_is_audited_and_leaves_itself_out(tricky_log, tmp_path, client, compliance):
    call_command("audit_export", format="jsonl", out=str(tmp_path / "a.jsonl"), outcome="answered")
    client.force_login(compliance)
    api = client.get("/api/v1/audit/export?format=csv&user=" + tricky_log[0].actor_username, headers=bearer(compliance))
    page = client.post(reverse("audit_export"), {"format": "jsonl", "kind": "document_delete"})
    api_body, page_body = b"".join(api.streaming_content), b"".join(page.streaming_content)
    exports = list(AuditEvent.objects.filter(kind=AuditKind.EXPORT).order_by("seq"))
    assert [(e.actor_username, e.data["via"].split(" (")[0], e.data["format"]) for e in exports] == [
        ("", "manage.py audit_export", "jsonl"),
        (compliance.username, "api", "csv"),
        (compliance.username, "audit page", "jsonl"),
    ]
    assert [e.data["filters"] for e in exports] == [
        {"outcome": "answered"},
        {"user": tricky_log[0].actor_username},
        {"kind": "document_delete"},
    ]
    assert api["X-Audit-Export-Seq"] == str(exports[1].seq)
    assert f'filename="audit-{exports[1].seq}.csv"' in api["Content-Disposition"]
    # An export holds the events before its own record, not the record nor anything after it.
    page_lines = page_body.decode().splitlines()
    assert [json.loads(line)["seq"] for line in page_lines[:-1]] == [tricky_log[-1].seq]
    assert str(exports[1].seq) not in [row["seq"] for row in csv_rows(api_body.decode())]


def bearer(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token_create(user=user)[1]}"}


def test_the_http_export_ends_with_its_manifest(tricky_log, client, compliance):
    response = client.get("/api/v1/audit/export?format=csv", headers=bearer(compliance))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    body = b"".join(response.streaming_content)
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    mark, manifest_json = rows[-1]
    manifest = json.loads(manifest_json)
    assert mark == MANIFEST_MARK and manifest["rows"] == len(tricky_log) == len(rows) - 2
    assert hashlib.sha256(body[: manifest["bytes"]]).hexdigest() == manifest["sha256"]
    assert body[manifest["bytes"] :].startswith(MANIFEST_MARK.encode())
    check_rows_match_the_log(csv_rows(body[: manifest["bytes"]].decode()), tricky_log)

    body = b"".join(client.get("/api/v1/audit/export?format=jsonl", headers=bearer(compliance)).streaming_content)
    *lines, last = body.decode().splitlines()
    manifest = json.loads(last)["manifest"]
    assert manifest["rows"] == len(lines) and manifest["last_hash"] == json.loads(lines[-1])["hash"]
    assert hashlib.sha256(body[: manifest["bytes"]]).hexdigest() == manifest["sha256"]


def test_the_filters_choose_the_rows(empty_log, employee):
    other = UserFactory(username="bob")
    first = exchange(
        employee, 1, "Hotel limit?", outcome="answered", model="anthropic:claude-haiku-5-5", documents=(7,)
    )
    second = exchange(employee, 2, "Parking?", outcome="refused", model="", documents=())
    third = exchange(other, 3, "Hotel in Rotterdam?", outcome="cached", model="extractive", documents=(8, 7))
    rate = {"kind": AuditKind.FEEDBACK}
    services.audit_record(**rate, actor=employee, data={"exchange_id": 101, "rating": "up"})
    services.audit_record(**rate, actor=employee, data={"exchange_id": 101, "rating": "down"})  # changed mind
    services.audit_record(**rate, actor=other, data={"exchange_id": 103, "rating": "up"})
    deleted = services.audit_record(kind=AuditKind.DOCUMENT_DELETE, actor=other, data={"document_id": 8})
    tamper(
        "UPDATE audit_auditevent SET created_at = '2025-01-10T12:00:00Z' WHERE seq IN (%s, %s)", [first.seq, third.seq]
    )

    def seqs(**filters) -> list[int]:
        stream = services.audit_export_begin(filters=AuditFilters(**filters), format="jsonl")
        return [json.loads(line)["seq"] for line in b"".join(stream).decode().splitlines()]

    assert seqs(since=dt.date(2025, 1, 10), until=dt.date(2025, 1, 10)) == [first.seq, third.seq]
    assert seqs(until=dt.date(2025, 1, 9)) == []
    assert seqs(user="bob") == [third.seq, third.seq + 3, deleted.seq]
    assert seqs(document=8) == [third.seq, deleted.seq]
    assert seqs(model="HAIKU") == [first.seq]
    assert seqs(outcome="refused") == [second.seq]
    assert seqs(feedback="down") == [first.seq]
    assert seqs(feedback="up") == [third.seq]
    assert seqs(feedback="any") == [first.seq, third.seq]
    assert seqs(feedback="none") == [second.seq]
    assert seqs(kind="document_delete") == [deleted.seq]
    assert seqs(q="rotterdam") == [third.seq]


@pytest.mark.parametrize("who", ["employee", "knowledge_admin"])
def test_the_export_api_is_for_compliance_only(request, tricky_log, client, who):
    user = request.getfixturevalue(who)
    _, token = api_token_create(user=user)
    before = AuditEvent.objects.count()
    response = client.get("/api/v1/audit/export?format=csv", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["detail"] == "Exporting the audit log needs the Compliance role."
    assert AuditEvent.objects.count() == before
    assert client.get("/api/v1/audit/export").status_code == 401  # no credentials


def test_the_export_api_takes_a_token_not_the_browser_session(tricky_log, client, compliance):
    # A GET with the session cookie can come from a link on another site (SameSite=Lax): it must not write
    # an export event in the officer's name. Scripts use a token; the browser posts the audit page's form.
    client.force_login(compliance)
    response = client.get("/api/v1/audit/export?format=csv")
    assert response.status_code == 401
    assert "bearer token" in response.json()["detail"] and "/audit/" in response.json()["detail"]
    assert not AuditEvent.objects.filter(kind=AuditKind.EXPORT).exists()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=xml", "Unknown export format 'xml': use csv or jsonl."),
        ("since=yesterday", "since: Enter a valid date."),
        ("since=2025-02-01&until=2025-01-01", "filters: “From” is after “To”: swap the dates."),
        ("outcome=maybe", "outcome: Select a valid choice. maybe is not one of the available choices."),
        ("document=99999999999999999999", "document: Ensure this value is less than or equal to 9223372036854775807."),
        ("q=a%00b", "q: Null characters are not allowed."),
    ],
)
def test_a_malformed_export_request_says_what_to_fix(tricky_log, client, compliance, query, message):
    response = client.get(f"/api/v1/audit/export?{query}", headers=bearer(compliance))
    assert response.status_code == 422 and response.json()["detail"] == message
    assert not AuditEvent.objects.filter(kind=AuditKind.EXPORT).exists()


def test_the_command_refuses_malformed_filters(empty_log, tmp_path):
    with pytest.raises(CommandError, match=r"since: Enter a valid date\."):
        call_command("audit_export", format="csv", out=str(tmp_path / "x.csv"), since="2025-13-01")
    with pytest.raises(CommandError, match="is not a directory"):
        call_command("audit_export", format="csv", out=str(tmp_path / "missing" / "x.csv"))
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_export_streams_under_uvicorn(asgi_server, settings):
    compliance = UserFactory(roles=["Compliance"])
    _, token = api_token_create(user=compliance)
    before = AuditEvent.objects.count()
    for n in range(300):  # ~200 KB: several chunks
        services.audit_record(kind=AuditKind.EXPORT, data={"n": n, "padding": "é" * 500})
    # The server signs its export checkpoint with this test's key, into this test's witness.
    server = asgi_server(
        KB_AUDIT_SIGNING_KEY=str(settings.KB_AUDIT_SIGNING_KEY), KB_AUDIT_WITNESS_DIR=str(settings.KB_AUDIT_WITNESS_DIR)
    )
    import httpx

    chunks = []
    with httpx.stream(
        "GET", f"{server.url}/api/v1/audit/export?format=jsonl", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status_code == 200
        chunks = list(response.iter_raw())
    body = b"".join(chunks)
    *lines, last = body.decode().splitlines()
    manifest = json.loads(last)["manifest"]
    assert manifest["rows"] == len(lines) == before + 300
    assert hashlib.sha256(body[: manifest["bytes"]]).hexdigest() == manifest["sha256"]
    (export,) = AuditEvent.objects.filter(kind=AuditKind.EXPORT, actor_id=compliance.pk)
    assert export.data["via"] == "api" and manifest["export_seq"] == export.seq
    report = services.chain_verify()
    assert report.ok and report.checkpoint["last_seq"] == export.seq and report.checkpoint["reason"] == "export"
