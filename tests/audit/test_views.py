"""The audit pages (Compliance) and the analytics page (Knowledge admins and Compliance)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection
from django.urls import reverse

from ingest.models import Document, DocumentStatus
from kb.audit import analytics, services
from kb.audit.models import AuditEvent, AuditKind
from tests.audit.conftest import record_some, tamper

COMPLIANCE_PAGES = [
    ("get", "audit_home", ()),
    ("get", "audit_detail", (1,)),
    ("post", "audit_export", ()),
    ("post", "audit_verify", ()),
    ("post", "audit_legal_hold", ()),
]


@pytest.mark.parametrize("who", ["employee", "knowledge_admin"])
def test_audit_pages_are_for_compliance_only(request, empty_log, client, who):
    record_some(1)
    client.force_login(request.getfixturevalue(who))
    for method, name, args in COMPLIANCE_PAGES:
        response = getattr(client, method)(reverse(name, args=args), {"active": "on", "reason": "x"})
        assert response.status_code == 403, name
        assert "Compliance role" in response.content.decode()
    assert AuditEvent.objects.count() == 1  # nothing was exported, held or verified


def test_analytics_is_for_knowledge_admins_and_compliance(client, employee, knowledge_admin, compliance):
    url = reverse("audit_analytics")
    client.force_login(employee)
    response = client.get(url)
    assert response.status_code == 403 and "Knowledge admin and Compliance roles" in response.content.decode()
    for user in (knowledge_admin, compliance):
        client.force_login(user)
        assert client.get(url).status_code == 200
    client.logout()
    assert client.get(url)["Location"].startswith(reverse("login"))


def test_the_menu_offers_analytics_to_admins_and_compliance(client, employee, knowledge_admin, compliance):
    link = f'href="{reverse("audit_analytics")}"'
    for user, shown in ((employee, False), (knowledge_admin, True), (compliance, True)):
        client.force_login(user)
        assert (link in client.get(reverse("home")).content.decode()) is shown


def test_the_log_page_lists_searches_and_pages_back(empty_log, client, compliance, employee, monkeypatch):
    monkeypatch.setattr("kb.audit.views.PAGE_SIZE", 3)
    for n in range(5):
        services.audit_record(
            kind=AuditKind.EXCHANGE,
            actor=employee,
            data={"exchange_id": n, "question": f"Question number {n}?", "outcome": "answered"},
        )
    client.force_login(compliance)
    page = client.get(reverse("audit_home")).content.decode()
    assert "Question number 4?" in page and "Question number 2?" in page and "Question number 1?" not in page
    assert "Not verified yet." in page and "Place legal hold" in page
    assert f'href="{reverse("audit_home")}?before=3"' in page
    older = client.get(reverse("audit_home"), {"before": 3}).content.decode()
    assert "Question number 1?" in older and "Question number 0?" in older and "Question number 4?" not in older

    found = client.get(reverse("audit_home"), {"q": "number 3"}).content.decode()
    assert "Question number 3?" in found and "Question number 4?" not in found
    # The export takes the same filters, posted by a form (an export is recorded: never a GET).
    assert '<form method="post" action="/audit/export"' in found
    assert '<input type="hidden" name="q" value="number 3">' in found
    assert '<button type="submit" name="format" value="csv">' in found


def test_the_search_form_swaps_only_the_results(empty_log, client, compliance):
    record_some(2)
    client.force_login(compliance)
    response = client.get(
        reverse("audit_home"), {"kind": "feedback"}, headers={"HX-Request": "true", "HX-Target": "audit-results"}
    )
    body = response.content.decode()
    assert body.lstrip().startswith('<section class="card" id="audit-results"') and "<html" not in body
    assert "Exchange 1001: up" in body


def test_bad_filters_are_explained_and_not_applied(empty_log, client, compliance):
    record_some(1)
    client.force_login(compliance)
    body = client.get(reverse("audit_home"), {"since": "last week"}).content.decode()
    assert "Enter a valid date." in body and "The filters were not applied" in body
    response = client.post(reverse("audit_export"), {"format": "csv", "since": "last week"}, follow=True)
    assert "since: Enter a valid date." in response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("audit_home") + "?since=last+week"
    assert not AuditEvent.objects.filter(kind=AuditKind.EXPORT).exists()


def test_an_export_is_posted_with_the_csrf_token_never_started_by_a_link(empty_log, compliance):
    # A cross-site page could make a signed-in officer's browser follow a link (SameSite=Lax cookies travel
    # with top-level GETs) and so write an export event in their name: exports are POSTs, CSRF-checked.
    from django.test import Client

    record_some(2)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(compliance)
    assert browser.get(reverse("audit_export"), {"format": "csv"}).status_code == 405
    assert browser.post(reverse("audit_export"), {"format": "csv"}).status_code == 403  # no CSRF token
    assert not AuditEvent.objects.filter(kind=AuditKind.EXPORT).exists()

    page = browser.get(reverse("audit_home"), {"kind": "feedback"})
    token = page.context["csrf_token"]
    response = browser.post(
        reverse("audit_export"), {"format": "jsonl", "kind": "feedback", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 200 and response["Content-Disposition"].startswith("attachment;")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 3  # the two feedback events and the manifest
    (export,) = AuditEvent.objects.filter(kind=AuditKind.EXPORT)
    assert export.data["filters"] == {"kind": "feedback"} and export.actor_id == compliance.pk


def test_the_page_shows_a_broken_chain(empty_log, client, compliance):
    record_some(3)
    tamper("UPDATE audit_auditevent SET data = '{}' WHERE seq = 2")
    services.chain_verify()
    client.force_login(compliance)
    page = client.get(reverse("audit_home")).content.decode()
    assert "Broken" in page and 'href="/audit/2/"' in page and "the event was changed" in page
    detail = client.get(reverse("audit_detail", args=[2])).content.decode()
    assert "Hash does not match the content" in detail


def test_verify_now_starts_the_check(empty_log, client, compliance, monkeypatch):
    started = []
    monkeypatch.setattr("kb.audit.tasks.chain_verify.delay", lambda *args: started.append(args))
    client.force_login(compliance)
    response = client.post(reverse("audit_verify"), follow=True)
    assert started == [("page",)] and "Verification started" in response.content.decode()

    def broker_down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr("kb.audit.tasks.chain_verify.delay", broker_down)
    response = client.post(reverse("audit_verify"), follow=True)
    assert "job queue is not reachable" in response.content.decode()


def test_one_exchange_reads_as_a_record(empty_log, client, compliance, employee):
    document = Document.objects.create(title="Travel policy", filename="t.md", sha256="a" * 64, size=1)
    event = services.audit_record(
        kind=AuditKind.EXCHANGE,
        actor=employee,
        data={
            "exchange_id": 9,
            "question": "What is the hotel limit?",
            "answer": "180 euros per night [1].",
            "outcome": "answered",
            "model": "anthropic:claude-haiku-5-5",
            "chain": ["anthropic:claude-sonnet-5-5", "anthropic:claude-haiku-5-5", "extractive"],
            "prompt_version": "answer-v1@abc",
            "fallback_used": True,
            "fallback_reasons": ["anthropic:claude-sonnet-5-5: 529"],
            "attempts": [{"link": "anthropic:claude-sonnet-5-5", "attempt": 1, "outcome": "failed", "reason": "529"}],
            "passages": [
                {
                    "n": 1,
                    "chunk_id": 31,
                    "document_id": document.pk,
                    "document_version": 2,
                    "vector_rank": 1,
                    "bm25_rank": 3,
                    "fused_score": 0.0323,
                    "similarity": 0.71,
                    "bm25_score": 4.2,
                }
            ],
            "citations": [{"n": 1, "document_id": document.pk, "title": "Travel policy", "quote": "180 euros"}],
            "usage": {"input_tokens": 1200, "output_tokens": 40},
            "cost_usd": 0.0015,
            "latency": {"retrieval_ms": 12.5, "first_token_ms": 400.1, "total_ms": 900.0},
            "cache": {"kind": "miss"},
        },
    )
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 9, "rating": "down"})
    client.force_login(compliance)
    page = client.get(reverse("audit_detail", args=[event.seq])).content.decode()
    for text in (
        "What is the hotel limit?",
        "180 euros per night [1].",
        "Travel policy",
        "0.0323",
        "anthropic:claude-sonnet-5-5 → anthropic:claude-haiku-5-5 → extractive",
        "answer-v1@abc",
        "<dt>Input tokens</dt><dd>1200</dd>",
        "$0.001500",
        "<dt>First token</dt><dd>400.1 ms</dd>",
        "Hash verifies",
        "<strong>down</strong>",
    ):
        assert text in page, text
    assert client.get(reverse("audit_detail", args=[event.seq + 99])).status_code == 404


def test_analytics_counts_from_the_log(empty_log, employee):
    cited = Document.objects.create(
        title="Cited", filename="c.md", sha256="c" * 64, size=1, searchable=True, status=DocumentStatus.READY
    )
    idle = Document.objects.create(
        title="Idle", filename="i.md", sha256="d" * 64, size=1, searchable=True, status=DocumentStatus.READY
    )
    rows = [
        ("answered", False, 100, 0.01, [cited.pk]),
        ("answered", True, 300, 0.02, [cited.pk]),
        ("cached", False, 10, 0.0, [cited.pk]),
        ("refused", False, 50, 0.0, []),
        ("refused", False, 60, 0.0, []),
        ("cancelled", False, 9000, 0.0, []),
    ]
    for n, (outcome, fallback, latency, cost, documents) in enumerate(rows):
        question = "Where is the gym?" if outcome == "refused" else f"Question {n}"
        services.audit_record(
            kind=AuditKind.EXCHANGE,
            actor=employee,
            data={
                "exchange_id": n,
                "question": question,
                "outcome": outcome,
                "fallback_used": fallback,
                "latency_ms": latency,
                "cost_usd": cost,
                "citations": [{"n": 1, "document_id": d} for d in documents],
            },
        )
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 0, "rating": "up"})
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 1, "rating": "up"})
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 1, "rating": "down"})
    event = AuditEvent.objects.order_by("seq").first()
    assert event is not None
    since = event.created_at.replace(hour=0, minute=0, second=0, microsecond=0)
    report = analytics.analytics_between(since, since + dt.timedelta(days=2))  # two days: a run at midnight
    total = report.total
    assert (total.questions, total.refused, total.cached, total.fallback, total.failed) == (6, 2, 1, 1, 1)
    assert total.refusal_rate == pytest.approx(100 * 2 / 6) and total.cost_usd == pytest.approx(0.03)
    # Latency of the five finished answers (the cancelled one's is when the client left): 10 50 60 100 300.
    assert total.p50_ms == pytest.approx(60) and total.p95_ms == pytest.approx(260)
    assert (report.feedback_up, report.feedback_down) == (1, 1)  # the latest rating of exchange 1 counts
    assert report.top_refused == [("Where is the gym?", 2)]
    assert [(d.title, d.exchanges) for d in report.most_cited] == [("Cited", 3)]
    assert report.never_cited == [idle] and report.never_cited_total == 1
    assert len(report.days) == 2 and sum(day.questions for day in report.days) == 6


def test_the_analytics_page_draws_charts_and_copes_with_nothing(empty_log, client, knowledge_admin, employee):
    client.force_login(knowledge_admin)
    empty = client.get(reverse("audit_analytics")).content.decode()
    assert "No answer has been rated in this period." in empty and "Nothing in this period." in empty
    services.audit_record(
        kind=AuditKind.EXCHANGE,
        actor=employee,
        data={"exchange_id": 1, "question": "Gym?", "outcome": "refused", "latency_ms": 42.0, "cost_usd": 0.5},
    )
    page = client.get(reverse("audit_analytics"), {"days": 7}).content.decode()
    assert page.count("<svg") == 4 and '<rect class="bar"' in page and "<polyline" in page
    assert "Gym?" in page and "Last 7 days" in page


def test_garbage_in_the_address_is_ignored_not_an_error(empty_log, client, compliance):
    record_some(2)
    client.force_login(compliance)
    for before in ("²", "-1", "99999999999999999999999", "abc"):
        assert client.get(reverse("audit_home"), {"before": before}).status_code == 200, before
    for days in ("²", "0", "99999999999999999999999"):
        assert client.get(reverse("audit_analytics"), {"days": days}).status_code == 200, days
    page = client.get(reverse("audit_home"), {"until": "9999-12-31", "since": "0001-01-01"}).content.decode()
    assert "Exchange 1001: up" in page


def _visible_text(page: str) -> str:
    # Times show microseconds on purpose; hashes are hex: neither is a score.
    page = re.sub(r"<time[^>]*>.*?</time>|<code>.*?</code>|<pre[^>]*>.*?</pre>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_an_exchange_record_shows_scores_rounded_and_never_none(client, corpus, compliance, employee, settings):
    from kb.answers import services as answers

    settings.KB_MODELS = ["extractive"]
    answers.ask("What is the hotel limit per night in Amsterdam?", employee)
    real = AuditEvent.objects.filter(kind=AuditKind.EXCHANGE).latest("seq")
    made_up = services.audit_record(
        kind=AuditKind.EXCHANGE,
        actor=employee,
        data={
            "exchange_id": 77,
            "question": "Parking?",
            "outcome": "answered",
            "guard": [{"guard": "injection", "action": "allow", "score": 0.123456789, "details": {"top": None}}],
            "grounding": [{"sentence": "Yes [1].", "cited": [1], "score": 0.98765432, "supported": True}],
            "passages": [{"n": 1, "chunk_id": 3, "document_id": 1, "fused_score": 0.0327868852, "similarity": None}],
            "attempts": [{"link": "extractive", "attempt": 1, "outcome": "ok", "status": None, "ms": None}],
            "cache": {"kind": "miss", "similarity": None, "nearest_similarity": 0.912345678},
            "usage": {"input_tokens": None},
            "latency": {"total_ms": 12.345678},
            "prompt_version": None,
            "evidence_score": None,
        },
    )
    client.force_login(compliance)
    for event in (real, made_up):
        text = _visible_text(client.get(reverse("audit_detail", args=[event.seq])).content.decode())
        assert "None" not in text, event.data
        # A long fraction that is not a time of day (12:00:41.989579) nor the cost in dollars.
        assert not re.findall(r"(?<![\d:.$])\d+\.\d{5,}", text), re.findall(r".{40}\d\.\d{5,}\S*", text)
    assert all(shown in text for shown in ("0.123", "0.988", "0.0328", "0.912", "12.3 ms"))


def test_verify_now_shows_the_result_in_place_when_it_is_done(empty_log, client, compliance, monkeypatch):
    from kb.audit import tasks

    record_some(3)
    started = []
    monkeypatch.setattr("kb.audit.tasks.chain_verify.delay", lambda *args: started.append(args))
    client.force_login(compliance)
    htmx = {"HX-Request": "true", "HX-Target": "audit-verification"}
    panel = client.post(reverse("audit_verify"), headers=htmx).content.decode()
    assert started == [("page",)]
    assert panel.lstrip().startswith('<div class="audit-status-item" id="audit-verification"') and "<html" not in panel
    assert "Verifying" in panel and 'hx-trigger="every 1s"' in panel and "?verification_after=0&amp;polls=1" in panel
    # Until the worker has recorded a check, the panel keeps polling.
    polled = client.get(reverse("audit_home"), {"verification_after": 0}, headers=htmx).content.decode()
    assert "Verifying" in polled and "hx-trigger" in polled.split(">")[0]

    # A worker that never answers: after VERIFY_POLL_S polls the panel stops asking and says what to do.
    gave_up = client.get(reverse("audit_home"), {"verification_after": 0, "polls": 600}, headers=htmx).content.decode()
    assert "hx-trigger" not in gave_up.split(">")[0] and "has not finished after 10 minutes" in gave_up

    tasks.chain_verify("page")  # what the worker runs
    done = client.get(reverse("audit_home"), {"verification_after": 0}, headers=htmx).content.decode()
    assert "Verifying" not in done and "hx-trigger" not in done.split(">")[0]
    assert "Intact" in done and "3 events" in done and "(#1–#3) verified" in done
    # The verification signed a checkpoint of what it read: the panel shows it, its signature and its witness line.
    assert "Covers events #1–#3 (3 events)" in done and "(verification)" in done
    assert "Signature valid" in done and "In the witness" in done


def test_verify_now_says_when_the_queue_is_down_in_place(empty_log, client, compliance, monkeypatch):
    def broker_down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr("kb.audit.tasks.chain_verify.delay", broker_down)
    client.force_login(compliance)
    panel = client.post(reverse("audit_verify"), headers={"HX-Request": "true"}).content.decode()
    assert "job queue is not reachable" in panel and "Run manage.py audit_verify" in panel
    assert "hx-trigger" not in panel.split(">")[0]


def test_the_page_shows_the_newest_checkpoint_and_whether_it_holds(empty_log, client, compliance, settings):
    client.force_login(compliance)
    assert "None yet: one is signed after every 100 events" in client.get(reverse("audit_home")).content.decode()
    record_some(4)
    checkpoint = services.checkpoint_make(reason="time")
    page = client.get(reverse("audit_home")).content.decode()
    assert "Covers events #1–#4 (4 events)" in page and f"with key <code>{checkpoint.key_id}</code>" in page
    assert "Signature valid" in page and "In the witness" in page
    # A witness that lost the line, and a row whose signature was altered, show as such.
    for path in settings.KB_AUDIT_WITNESS_DIR.iterdir():
        path.write_text("")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_checkpoint SET last_seq = 3 WHERE id = %s", [checkpoint.pk])
    page = client.get(reverse("audit_home")).content.decode()
    assert "Signature invalid" in page and "Missing from the witness" in page


def test_analytics_tells_documents_with_the_same_title_apart(empty_log, client, knowledge_admin, employee):
    from django.utils import timezone

    def document(filename: str, title: str = "Travel and Expenses Policy") -> Document:
        return Document.objects.create(
            title=title, filename=filename, sha256=filename.ljust(64, "0")[:64], size=1,
            searchable=True, status=DocumentStatus.READY,
        )  # fmt: skip

    cited, idle, unique = document("uk-travel.docx"), document("travel-and-expenses.docx"), document("gym.md", "Gym")
    citations = [{"n": 1, "document_id": cited.pk}]
    data = {"exchange_id": 1, "question": "Mileage?", "outcome": "answered", "citations": citations}
    services.audit_record(kind=AuditKind.EXCHANGE, actor=employee, data=data)
    event = AuditEvent.objects.get()
    since = event.created_at.replace(hour=0, minute=0, second=0, microsecond=0)
    report = analytics.analytics_between(since, since + dt.timedelta(days=2))
    day = f"uploaded {timezone.localdate(cited.created_at):%Y-%m-%d}"
    assert [(d.title, d.detail) for d in report.most_cited] == [(cited.title, f"uk-travel.docx, {day}")]
    assert report.never_cited_listed == [(unique, ""), (idle, f"travel-and-expenses.docx, {day}")]
    client.force_login(knowledge_admin)
    page = client.get(reverse("audit_analytics")).content.decode()
    assert f"(uk-travel.docx, {day})" in page and f"(travel-and-expenses.docx, {day})" in page
    assert "(gym.md" not in page
