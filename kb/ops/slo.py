"""Service level objectives and their error budgets, from the exchanges on record.

Three SLOs, each a share of good events among the events it counts (targets in settings, KB_SLO_*):

- availability: finished questions (answered, cached, refused, blocked or failed; a client that went away is not
  counted) answered without a failure: bad is an exchange that failed, met a failed model call (even one a retry
  made good: the asker waited for it, or saw the text start again), or was answered by a fallback link (the first
  link failed or its breaker was open). A model failing 30 % of its calls makes ~30 % of questions bad;
- first_token: exchanges whose answer text started streaming, good when the first text came within
  KB_SLO_FIRST_TOKEN_SECONDS;
- quality: answers (answered or cached, not refusals), bad when a sentence was marked unsupported by the
  grounding check or the asker rated the answer not helpful.

A burn rate is the error ratio over a window divided by the error budget (1 - target): 1 spends the budget
exactly over the SLO period, 14.4 spends 2 % of it in an hour. The same rules are counted twice: from the database
(`slo_counts`, the exact figures for /metrics' gauges and the Operations page) and as they happen, on the counters
Prometheus' burn-rate rules read (`slo_count_exchange`, `slo_count_rating`; deploy/prometheus/kb-slo.rules.yml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from kb import metrics
from kb.answers.models import Exchange, Feedback, Outcome

# The period an error budget is spent over. The burn-rate factors below (and the alert rules' thresholds in
# deploy/prometheus/kb-slo.rules.yml) are derived from it: change both together.
SLO_PERIOD = timedelta(days=30)
PERIOD = "30d"
WINDOWS: dict[str, timedelta] = {
    "5m": timedelta(minutes=5),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "3d": timedelta(days=3),
    PERIOD: SLO_PERIOD,
}
SHOWN_WINDOWS = ("1h", "6h", "3d")  # on /metrics and the Operations page; 5m and 30m only confirm alerts

ANSWERING = (Outcome.ANSWERED, Outcome.CACHED)
FAILED_CALL = "failed"  # an attempt's outcome in Exchange.attempts (kb.llm.chain.Attempt)
FINISHED = (Outcome.ANSWERED, Outcome.CACHED, Outcome.REFUSED, Outcome.BLOCKED, Outcome.FAILED)


@dataclass(frozen=True)
class BurnAlert:
    """Multi-window burn-rate alert (Google SRE workbook, ch. 5): fires while both windows burn faster than
    `factor`, the rate that spends `budget_share` of the period's budget within the long window."""

    name: str
    long: str
    short: str
    budget_share: float
    severity: str

    @property
    def factor(self) -> float:
        return round(self.budget_share * (SLO_PERIOD / WINDOWS[self.long]), 6)


ALERTS = (
    BurnAlert("fast", long="1h", short="5m", budget_share=0.02, severity="page"),  # 14.4
    BurnAlert("medium", long="6h", short="30m", budget_share=0.05, severity="page"),  # 6
    BurnAlert("slow", long="3d", short="6h", budget_share=0.10, severity="ticket"),  # 1
)


@dataclass(frozen=True)
class Slo:
    name: str
    title: str
    target: float
    events: Q  # the finished exchanges this SLO counts
    bad: Q  # which of them are bad (within `events`)


def slo_definitions() -> tuple[Slo, ...]:
    slow_ms = settings.KB_SLO_FIRST_TOKEN_SECONDS * 1000
    return (
        Slo(
            "availability",
            "Questions answered without a failure",
            settings.KB_SLO_AVAILABILITY,
            events=Q(outcome__in=FINISHED),
            bad=Q(outcome=Outcome.FAILED) | Q(fallback_used=True) | Q(attempts__contains=[{"outcome": FAILED_CALL}]),
        ),
        Slo(
            "first_token",
            f"First answer text within {settings.KB_SLO_FIRST_TOKEN_SECONDS:g} s",
            settings.KB_SLO_FIRST_TOKEN_TARGET,
            events=Q(latency__has_key="first_token_ms") & ~Q(outcome=Outcome.PENDING),
            bad=Q(latency__first_token_ms__gt=slow_ms),
        ),
        Slo(
            "quality",
            "Answers with every sentence supported and not rated unhelpful",
            settings.KB_SLO_QUALITY,
            events=Q(outcome__in=ANSWERING, refused=False),
            bad=Q(grounding__contains=[{"supported": False}]) | Q(feedback__rating=Feedback.Rating.DOWN),
        ),
    )


SLO_NAMES = ("availability", "first_token", "quality")


def exchange_slo_results(
    *,
    outcome: str,
    refused: bool,
    fallback_used: bool,
    attempts: Sequence[Mapping],
    latency: Mapping,
    grounding: Sequence[Mapping],
) -> dict[str, bool]:
    """The SLOs a just-finished exchange counts for, each with whether it is bad: the `Slo.events`/`Slo.bad`
    rules in Python, without the rating (which comes later). tests/ops/test_slo.py checks that both agree."""
    results: dict[str, bool] = {}
    if outcome in FINISHED:
        failed_call = any(attempt.get("outcome") == FAILED_CALL for attempt in attempts)
        results["availability"] = outcome == Outcome.FAILED or fallback_used or failed_call
    if "first_token_ms" in latency and outcome != Outcome.PENDING:
        results["first_token"] = latency["first_token_ms"] > settings.KB_SLO_FIRST_TOKEN_SECONDS * 1000
    if outcome in ANSWERING and not refused:
        results["quality"] = any(not item.get("supported", True) for item in grounding)
    return results


def slo_count_exchange(
    *,
    outcome: str,
    refused: bool,
    fallback_used: bool,
    attempts: Sequence[Mapping],
    latency: Mapping,
    grounding: Sequence[Mapping],
) -> None:
    """Count a finished exchange on the SLO counters (kb_slo_events_total, kb_slo_bad_events_total)."""
    results = exchange_slo_results(
        outcome=outcome,
        refused=refused,
        fallback_used=fallback_used,
        attempts=attempts,
        latency=latency,
        grounding=grounding,
    )
    for name, bad in results.items():
        metrics.SLO_EVENTS.labels(name).inc()
        if bad:
            metrics.SLO_BAD_EVENTS.labels(name).inc()


def slo_count_rating(*, exchange: Exchange, previous: str | None, rating: str) -> None:
    """An answer newly rated not helpful turns a good quality event bad: one more bad event on the counter (the
    event itself was counted when the exchange was recorded). A counter cannot take it back when the rating
    changes to helpful again; the database figures (`slo_counts`) always use the latest rating."""
    if rating != Feedback.Rating.DOWN or previous == Feedback.Rating.DOWN:
        return
    results = exchange_slo_results(
        outcome=exchange.outcome,
        refused=exchange.refused,
        fallback_used=exchange.fallback_used,
        attempts=exchange.attempts,
        latency=exchange.latency,
        grounding=exchange.grounding,
    )
    if results.get("quality") is False:  # counted, and good until now
        metrics.SLO_BAD_EVENTS.labels("quality").inc()


@dataclass(frozen=True)
class Counts:
    events: int
    bad: int

    def burn_rate(self, target: float) -> float:
        """Error ratio / error budget; 0 when nothing was counted."""
        if not self.events:
            return 0.0
        return (self.bad / self.events) / (1 - target)


def slo_counts(
    *, now: datetime, slos: Sequence[Slo], windows: Mapping[str, timedelta]
) -> dict[tuple[str, str], Counts]:
    """Events and bad events per (SLO, window ending at `now`), in one aggregate query: one scan of the exchanges
    created within the longest window, each figure a filtered COUNT over it; the rating is a left join on
    answers_feedback's unique exchange_id. The range is on the index answers_exchange_time (created_at), which
    PostgreSQL uses when the window is a small part of the table (a year of exchanges kept); when it is most of the
    table it scans the table. 50,000 exchanges in the period: 0.13-0.16 s (tests/bench/test_slo_bench.py)."""
    start = now - max(windows.values())
    aggregates = {}
    for slo in slos:
        for window, length in windows.items():
            within = Q(created_at__gt=now - length) & slo.events
            aggregates[f"{slo.name}__{window}__events"] = Count("pk", filter=within)
            aggregates[f"{slo.name}__{window}__bad"] = Count("pk", filter=within & slo.bad)
    row = Exchange.objects.filter(created_at__gt=start, created_at__lte=now).aggregate(**aggregates)
    return {
        (slo.name, window): Counts(row[f"{slo.name}__{window}__events"], row[f"{slo.name}__{window}__bad"])
        for slo in slos
        for window in windows
    }


@dataclass(frozen=True)
class WindowFigure:
    window: str
    events: int
    bad: int
    burn_rate: float


@dataclass(frozen=True)
class SloStatus:
    """One SLO as the Operations page and /metrics show it."""

    name: str
    title: str
    target: float
    windows: tuple[WindowFigure, ...]  # every window in WINDOWS, shortest first
    budget_remaining: float  # share of the period's error budget left (negative: overspent)
    alerts: tuple[BurnAlert, ...]  # the burn-rate alerts whose conditions hold now

    def burn_rate(self, window: str) -> float:
        return next(figure.burn_rate for figure in self.windows if figure.window == window)

    @property
    def shown_windows(self) -> tuple[WindowFigure, ...]:
        return tuple(figure for figure in self.windows if figure.window in SHOWN_WINDOWS)

    @property
    def period(self) -> WindowFigure:
        return next(figure for figure in self.windows if figure.window == PERIOD)

    @property
    def target_label(self) -> str:
        return f"{self.target * 100:g} %"

    @property
    def budget_remaining_percent(self) -> float:
        return self.budget_remaining * 100

    @property
    def status(self) -> str:
        return "alerting" if self.alerts else "ok"

    @property
    def severity(self) -> str:
        severities = {alert.severity for alert in self.alerts}
        return "page" if "page" in severities else ("ticket" if severities else "")


def slo_report(*, now: datetime | None = None) -> list[SloStatus]:
    """Each SLO's burn rates over WINDOWS, the budget left over the last SLO_PERIOD and the alerts that hold."""
    now = now or timezone.now()
    slos = slo_definitions()
    counts = slo_counts(now=now, slos=slos, windows=WINDOWS)
    report = []
    for slo in slos:
        figures = tuple(
            WindowFigure(
                window,
                counts[slo.name, window].events,
                counts[slo.name, window].bad,
                counts[slo.name, window].burn_rate(slo.target),
            )
            for window in WINDOWS
        )
        rates = {figure.window: figure.burn_rate for figure in figures}
        alerts = tuple(
            alert for alert in ALERTS if rates[alert.long] > alert.factor and rates[alert.short] > alert.factor
        )
        report.append(
            SloStatus(
                name=slo.name,
                title=slo.title,
                target=slo.target,
                windows=figures,
                budget_remaining=1 - rates[PERIOD],
                alerts=alerts,
            )
        )
    return report
