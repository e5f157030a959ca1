"""SLOs and burn rates (kb/ops/slo.py) from exchanges in the real database; the counters the ask path and feedback
increment; the /metrics gauges; the Operations page's partial. The alert rules are tested with promtool in
tests/ops/test_slo_rules.py."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.template.loader import render_to_string
from django.utils import timezone

from kb import metrics
from kb.answers import services
from kb.answers.models import Exchange, Feedback, Outcome
from kb.ops import slo
from tests.conftest import PRIMARY
from tests.fake_anthropic import Reply

HOTEL = "What is the hotel limit per night in Amsterdam?"
SUPPORTED = [{"sentence": "A.", "cited": [1], "score": 0.9, "supported": True}]
OK_CALL = {"link": PRIMARY, "attempt": 1, "outcome": "ok", "reason": ""}
FAILED_CALL = {"link": PRIMARY, "attempt": 1, "outcome": "failed", "reason": "529", "status": 529}
SKIPPED_CALL = {"link": PRIMARY, "attempt": 0, "outcome": "skipped", "reason": "circuit_open"}
UNSUPPORTED = [*SUPPORTED, {"sentence": "B.", "cited": [], "score": 0.1, "supported": False}]


@pytest.fixture(autouse=True)
def targets(settings):
    settings.KB_SLO_AVAILABILITY = 0.995
    settings.KB_SLO_FIRST_TOKEN_SECONDS = 5.0
    settings.KB_SLO_FIRST_TOKEN_TARGET = 0.95
    settings.KB_SLO_QUALITY = 0.9


def add(user, now, ago: timedelta, n: int = 1, **fields) -> list[Exchange]:
    fields.setdefault("outcome", Outcome.ANSWERED)
    return Exchange.objects.bulk_create(
        Exchange(user=user, question="q", created_at=now - ago, **fields) for _ in range(n)
    )


def by_name(report) -> dict[str, slo.SloStatus]:
    return {status.name: status for status in report}


def counts(status: slo.SloStatus) -> dict[str, tuple[int, int]]:
    return {figure.window: (figure.events, figure.bad) for figure in status.windows}


def test_availability_burn_rates_and_budget_per_window(employee):
    now = timezone.now()
    minutes, hours = timedelta(minutes=1), timedelta(hours=1)
    # Last 5 minutes: 20 answered, 1 failed.
    add(employee, now, 2 * minutes, 20)
    add(employee, now, 2 * minutes, outcome=Outcome.FAILED)
    # 40 minutes ago: 77 answered, 1 answered by a fallback link, 1 by the first link after a failed call (a retry).
    add(employee, now, 40 * minutes, 76)
    add(employee, now, 40 * minutes, attempts=[OK_CALL])
    add(employee, now, 40 * minutes, fallback_used=True, attempts=[FAILED_CALL, FAILED_CALL, OK_CALL])
    add(employee, now, 40 * minutes, attempts=[FAILED_CALL, OK_CALL])
    # 3 hours ago: 100 refused or blocked (answers too), none bad; 2 days ago: 800 cached, 2 failed.
    add(employee, now, 3 * hours, 50, outcome=Outcome.REFUSED, refused=True)
    add(employee, now, 3 * hours, 50, outcome=Outcome.BLOCKED, refused=True)
    add(employee, now, 48 * hours, 798, outcome=Outcome.CACHED)
    add(employee, now, 48 * hours, 2, outcome=Outcome.FAILED)
    # 20 days ago: 1,000, of which 3 failed. 40 days ago (outside the 30-day period): 100 failed.
    add(employee, now, 20 * 24 * hours, 997)
    add(employee, now, 20 * 24 * hours, 3, outcome=Outcome.FAILED)
    add(employee, now, 40 * 24 * hours, 100, outcome=Outcome.FAILED)
    # Never counted: in flight, the client went away, or in the future of `now`.
    add(employee, now, minutes, 5, outcome=Outcome.PENDING)
    add(employee, now, minutes, 5, outcome=Outcome.CANCELLED)
    add(employee, now, -minutes, 5, outcome=Outcome.FAILED)

    availability = by_name(slo.slo_report(now=now))["availability"]

    assert counts(availability) == {
        "5m": (21, 1),
        "30m": (21, 1),
        "1h": (100, 3),
        "6h": (200, 3),
        "3d": (1000, 5),
        "30d": (2000, 8),
    }
    assert availability.target == 0.995
    assert availability.burn_rate("5m") == pytest.approx((1 / 21) / 0.005)
    assert availability.burn_rate("1h") == pytest.approx(6.0)
    assert availability.burn_rate("6h") == pytest.approx(3.0)
    assert availability.burn_rate("3d") == pytest.approx(1.0)
    # 8 bad of the 10 the period allows (0.5 % of 2,000): 20 % of the budget left.
    assert availability.budget_remaining == pytest.approx(0.2)
    # 1 h burns at 6 (< 14.4), 6 h at 3 (< 6), 3 d at 1 (not above 1): no alert.
    assert availability.alerts == () and availability.status == "ok"
    assert [figure.window for figure in availability.shown_windows] == ["1h", "6h", "3d"]


def test_first_token_counts_streamed_answers_against_the_threshold(employee):
    now = timezone.now()
    ago = timedelta(minutes=10)
    add(employee, now, ago, 6, latency={"first_token_ms": 4999.0, "total_ms": 8000})
    add(employee, now, ago, 1, latency={"first_token_ms": 5000.0})  # at the threshold: good
    add(employee, now, ago, 3, latency={"first_token_ms": 5001.0})
    add(employee, now, ago, 1, outcome=Outcome.FAILED, latency={"first_token_ms": 9000.0})  # text came, then failed
    add(employee, now, ago, 4, latency={"total_ms": 30})  # no streamed text (cached, blocked): not counted
    add(employee, now, ago, 2, outcome=Outcome.PENDING, latency={"first_token_ms": 9000.0})

    first_token = by_name(slo.slo_report(now=now))["first_token"]

    assert counts(first_token)["1h"] == (11, 4)
    assert first_token.burn_rate("1h") == pytest.approx((4 / 11) / 0.05)
    assert first_token.title == "First answer text within 5 s"


def test_quality_counts_unsupported_sentences_and_ratings_not_helpful(employee):
    now = timezone.now()
    ago = timedelta(hours=2)
    good = add(employee, now, ago, 5, grounding=SUPPORTED)
    add(employee, now, ago, 2, grounding=UNSUPPORTED)
    add(employee, now, ago, 2, outcome=Outcome.CACHED)
    add(employee, now, ago, 3, outcome=Outcome.REFUSED, refused=True, grounding=UNSUPPORTED)  # not answers
    add(employee, now, ago, 2, outcome=Outcome.FAILED)
    Feedback.objects.create(exchange=good[0], user=employee, rating=Feedback.Rating.DOWN)
    Feedback.objects.create(exchange=good[1], user=employee, rating=Feedback.Rating.UP)

    quality = by_name(slo.slo_report(now=now))["quality"]

    assert counts(quality)["6h"] == (9, 3)
    assert counts(quality)["1h"] == (0, 0)
    assert quality.burn_rate("1h") == 0.0
    assert quality.burn_rate("6h") == pytest.approx((3 / 9) / 0.1)


def test_a_30_percent_failure_rate_in_the_last_hour_raises_the_fast_alert(employee):
    now = timezone.now()
    for minute in range(0, 60, 2):
        add(employee, now, timedelta(minutes=minute, seconds=30), 7)
        add(employee, now, timedelta(minutes=minute, seconds=30), 3, outcome=Outcome.FAILED)
    add(employee, now, timedelta(days=2), 1000, latency={"first_token_ms": 100.0})

    report = by_name(slo.slo_report(now=now))

    availability = report["availability"]
    assert availability.burn_rate("1h") == pytest.approx(60.0)
    assert availability.burn_rate("5m") == pytest.approx(60.0)
    assert availability.burn_rate("3d") == pytest.approx((90 / 1300) / 0.005)
    assert [alert.name for alert in availability.alerts] == ["fast", "medium", "slow"]
    assert availability.status == "alerting" and availability.severity == "page"
    assert report["first_token"].status == "ok"


def test_the_alert_factors_spend_the_stated_share_of_a_30_day_budget():
    assert {alert.name: alert.factor for alert in slo.ALERTS} == {"fast": 14.4, "medium": 6.0, "slow": 1.0}
    rules = (Path(settings.BASE_DIR) / "deploy" / "prometheus" / "kb-slo.rules.yml").read_text()
    for alert in slo.ALERTS:
        factor = f"{alert.factor:g}"
        assert f"kb_slo:burn_rate:{alert.long} > {factor} and kb_slo:burn_rate:{alert.short} > {factor}" in rules


def test_the_python_rules_and_the_database_rules_agree(employee):
    """What the counters count at record time (exchange_slo_results) and what the database query counts
    (Slo.events / Slo.bad) are the same rules, on every combination that matters (ratings apart)."""
    now = timezone.now()
    combinations = list(
        itertools.product(
            Outcome.values,
            [False, True],  # refused
            [False, True],  # fallback_used
            [[], [OK_CALL], [FAILED_CALL, OK_CALL], [SKIPPED_CALL]],
            [{}, {"first_token_ms": 120.0}, {"first_token_ms": 7000.0}],
            [[], SUPPORTED, UNSUPPORTED],
        )
    )
    exchanges = []
    for outcome, refused, fallback_used, attempts, latency, grounding in combinations:
        exchanges += add(
            employee, now, timedelta(minutes=3), outcome=outcome, refused=refused, fallback_used=fallback_used,
            attempts=attempts, latency=latency, grounding=grounding,
        )  # fmt: skip
    for definition in slo.slo_definitions():
        counted = set(Exchange.objects.filter(definition.events).values_list("pk", flat=True))
        bad = set(Exchange.objects.filter(definition.events & definition.bad).values_list("pk", flat=True))
        expected_counted, expected_bad = set(), set()
        for exchange in exchanges:
            results = slo.exchange_slo_results(
                outcome=exchange.outcome, refused=exchange.refused, fallback_used=exchange.fallback_used,
                attempts=exchange.attempts, latency=exchange.latency, grounding=exchange.grounding,
            )  # fmt: skip
            if definition.name in results:
                expected_counted.add(exchange.pk)
                if results[definition.name]:
                    expected_bad.add(exchange.pk)
        assert counted == expected_counted, definition.name
        assert bad == expected_bad, definition.name
        assert 0 < len(bad) < len(counted) < len(exchanges)


def test_an_empty_record_burns_nothing_and_keeps_the_whole_budget(db):
    report = slo.slo_report()
    assert [status.name for status in report] == list(slo.SLO_NAMES)
    for status in report:
        assert all(figure.burn_rate == 0.0 for figure in status.windows)
        assert status.budget_remaining == 1.0 and status.status == "ok"


def _counter(counter, name: str) -> float:
    return counter.labels(name)._value.get()


def _snapshot() -> dict[tuple[str, str], float]:
    return {
        (name, kind): _counter(counter, name)
        for name in slo.SLO_NAMES
        for kind, counter in (("events", metrics.SLO_EVENTS), ("bad", metrics.SLO_BAD_EVENTS))
    }


def _delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def test_the_ask_path_counts_each_exchange_on_the_slo_counters(fake_anthropic, corpus, employee):
    before = _snapshot()
    answered = services.ask(HOTEL, employee)
    assert answered["model"] == PRIMARY and not answered["fallback_used"]
    after_answer = _snapshot()
    assert _delta(before, after_answer) == {
        ("availability", "events"): 1,
        ("first_token", "events"): 1,
        ("quality", "events"): 1,
    }

    fake_anthropic.then(Reply(status=401))  # a configuration error: answered extractively, a fallback
    fallback = services.ask("What is the hotel limit per night in Paris?", employee)
    assert fallback["fallback_used"]
    after_fallback = _snapshot()
    delta = _delta(after_answer, after_fallback)
    assert delta[("availability", "events")] == 1 and delta[("availability", "bad")] == 1
    assert delta[("first_token", "events")] == 1 and ("first_token", "bad") not in delta

    fake_anthropic.then(Reply(status=529))  # overloaded once: the retry answers, but the asker waited for it
    retried = services.ask("How long must passwords be?", employee)
    assert retried["model"] == PRIMARY and not retried["fallback_used"]
    after_retry = _snapshot()
    delta = _delta(after_fallback, after_retry)
    assert delta[("availability", "events")] == 1 and delta[("availability", "bad")] == 1

    # The database figures count the same three exchanges.
    availability = by_name(slo.slo_report())["availability"]
    assert counts(availability)["5m"] == (3, 2)

    # A rating "not helpful" turns the good answer's quality event bad, once; a refusal's rating counts nothing.
    exchange = Exchange.objects.get(pk=answered["exchange_id"])
    assert exchange.grounding and all(item["supported"] for item in exchange.grounding)
    services.feedback_give(exchange=exchange, user=employee, rating="down", reason="wrong")
    services.feedback_give(exchange=exchange, user=employee, rating="down", reason="outdated")
    assert _delta(after_retry, _snapshot()) == {("quality", "bad"): 1}
    quality = counts(by_name(slo.slo_report())["quality"])["5m"]
    flagged = sum(
        not result["refused"] and any(not g["supported"] for g in result["grounding"]) for result in (fallback, retried)
    )
    assert quality[1] == 1 + flagged


def test_a_rating_counts_only_on_an_answer_the_quality_slo_counted(employee):
    now = timezone.now()
    (refused,) = add(employee, now, timedelta(minutes=1), outcome=Outcome.REFUSED, refused=True)
    (flagged,) = add(employee, now, timedelta(minutes=1), grounding=UNSUPPORTED)
    (good,) = add(employee, now, timedelta(minutes=1), grounding=SUPPORTED)
    before = _snapshot()
    services.feedback_give(exchange=refused, user=employee, rating="down")
    services.feedback_give(exchange=flagged, user=employee, rating="down")  # already bad when recorded
    services.feedback_give(exchange=good, user=employee, rating="up")
    assert _delta(before, _snapshot()) == {}
    services.feedback_give(exchange=good, user=employee, rating="down")
    assert _delta(before, _snapshot()) == {("quality", "bad"): 1}


def sample(body: str, series: str) -> float:
    return float(next(line for line in body.splitlines() if line.startswith(series + " ")).rsplit(" ", 1)[1])


def test_metrics_exposes_the_slo_gauges(employee, client):
    now = timezone.now()
    add(employee, now, timedelta(minutes=20), 98)
    add(employee, now, timedelta(minutes=20), 2, outcome=Outcome.FAILED)
    body = client.get("/metrics").content.decode()
    assert 'kb_slo_objective{slo="availability"} 0.995' in body
    assert 'kb_slo_objective{slo="quality"} 0.9' in body
    burn = next(
        line for line in body.splitlines() if line.startswith('kb_slo_burn_rate{slo="availability",window="1h"}')
    )
    assert float(burn.rsplit(" ", 1)[1]) == pytest.approx(4.0)
    for window in ("1h", "6h", "3d"):
        assert f'kb_slo_burn_rate{{slo="first_token",window="{window}"}} 0.0' in body
    remaining = next(
        line for line in body.splitlines() if line.startswith('kb_slo_budget_remaining{slo="availability"}')
    )
    assert float(remaining.rsplit(" ", 1)[1]) == pytest.approx(-3.0)  # 2 bad of 0.5 allowed: overspent
    assert 'kb_slo_events_total{slo="availability"}' in body and 'kb_slo_bad_events_total{slo="quality"}' in body


def test_the_slo_partial_renders_the_report(employee):
    now = timezone.now()
    add(employee, now, timedelta(minutes=2), 7)
    add(employee, now, timedelta(minutes=2), 3, outcome=Outcome.FAILED)
    html = render_to_string("ops/_slo.html", {"slos": slo.slo_report(now=now)})
    assert "Questions answered without a failure" in html and "99.5" in html
    assert "alerting" in html and "page" in html
    assert "60.0" in html  # the 1 h burn rate
    assert html.count('class="slo-status slo-ok"') == 2  # first token and quality burn nothing
    assert html.count('class="slo-status slo-alerting"') == 1
    assert html.count("<tr") == 1 + len(slo.SLO_NAMES)
    empty = render_to_string("ops/_slo.html", {"slos": []})
    assert "No SLOs" in empty


def test_the_slo_report_command_prints_the_figures(employee):
    now = timezone.now()
    add(employee, now, timedelta(minutes=2), 7)
    add(employee, now, timedelta(minutes=2), 3, outcome=Outcome.FAILED)
    out = StringIO()
    call_command("slo_report", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if line.startswith("availability"))
    assert "99.5 %" in line and "60.00" in line and "alerting (page: fast, medium, slow)" in line
    out = StringIO()
    call_command("slo_report", "--json", stdout=out)
    rows = {row["slo"]: row for row in json.loads(out.getvalue())}
    assert rows["availability"]["windows"]["1h"] == {"events": 10, "bad": 3, "burn_rate": pytest.approx(60.0)}
    assert rows["quality"]["windows"]["1h"]["events"] == 7 and rows["quality"]["status"] == "ok"
