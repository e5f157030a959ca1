"""Prometheus metrics for the web process, exposed at /metrics."""

from __future__ import annotations

import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kb.middleware import AroundRequest

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("kb_http_requests_total", "HTTP requests handled", ["method", "status"])
HTTP_LATENCY = Histogram(
    "kb_http_request_duration_seconds",
    "Time to produce the response (streaming bodies excluded)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY_CHECK = Gauge("kb_ready_check", "Last /readyz result per check (1 ok, 0 failing)", ["check"])

# Model layer. Link labels come from KB_MODELS, a bounded set.
LLM_ATTEMPTS = Counter("kb_llm_attempts_total", "Calls to a model link by outcome", ["link", "outcome"])
LLM_BREAKER_STATE = Gauge("kb_llm_breaker_state", "Circuit breaker per link: 0 closed, 1 half-open, 2 open", ["link"])
LLM_CONFIG_ERRORS = Counter(
    "kb_llm_config_errors_total", "400/401/403/404 from a model link: a configuration error", ["link", "status"]
)
LLM_TOKENS = Counter("kb_llm_tokens_total", "Tokens by link and kind", ["link", "kind"])
LLM_COST = Counter("kb_llm_cost_usd_total", "Model spending in USD by link", ["link"])
ANSWER_CACHE = Counter("kb_answer_cache_total", "Answer cache lookups by result", ["result"])
ASK_OUTCOMES = Counter("kb_ask_total", "Questions by outcome", ["outcome"])
ASK_OVERHEAD = Histogram(
    "kb_ask_overhead_seconds",
    "Pipeline time before the model is called (guards, caches, retrieval, records)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ASK_FIRST_TOKEN = Histogram(
    "kb_ask_first_token_seconds",
    "Time from the question to the first answer text",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class AuditChainCollector:
    """The last verification of the audit log's hash chain, read from the database at each scrape: beat runs
    it in a worker process, and this process serves /metrics. Alert on kb_audit_chain_ok == 0."""

    def describe(self):
        # Names only, so that registering does not touch the database.
        yield GaugeMetricFamily("kb_audit_chain_ok", "Last audit chain verification: 1 intact, 0 broken")
        yield CounterMetricFamily("kb_audit_verify_failures", "Audit chain verifications that found a break")
        yield GaugeMetricFamily("kb_audit_chain_verified_timestamp_seconds", "When the audit chain was last verified")
        yield GaugeMetricFamily("kb_audit_chain_events", "Events in the audit chain at the last verification")

    def collect(self):
        try:
            from kb.audit.models import ChainCheck

            last = ChainCheck.objects.order_by("-finished_at", "-id").first()
            failures = ChainCheck.objects.filter(ok=False).count()
        except Exception as error:  # no database, or not migrated yet: say nothing rather than break /metrics
            logger.warning("audit chain metrics unavailable: %s", error)
            return
        yield CounterMetricFamily(
            "kb_audit_verify_failures", "Audit chain verifications that found a break", value=failures
        )
        if last is None:
            return
        yield GaugeMetricFamily(
            "kb_audit_chain_ok", "Last audit chain verification: 1 intact, 0 broken", value=1 if last.ok else 0
        )
        yield GaugeMetricFamily(
            "kb_audit_chain_verified_timestamp_seconds",
            "When the audit chain was last verified",
            value=last.finished_at.timestamp(),
        )
        yield GaugeMetricFamily(
            "kb_audit_chain_events", "Events in the audit chain at the last verification", value=last.rows
        )


REGISTRY.register(AuditChainCollector())

# SLO events as they happen, for Prometheus' burn-rate rules (deploy/prometheus/kb-slo.rules.yml): every event is
# counted once when its exchange is recorded; a bad one also on the second counter (a quality event again when
# its answer is rated not helpful later). Counted by the process that records the exchange, a web process.
SLO_EVENTS = Counter("kb_slo_events_total", "Events counted by an SLO (finished exchanges it applies to)", ["slo"])
SLO_BAD_EVENTS = Counter("kb_slo_bad_events_total", "Events that went against an SLO", ["slo"])
for _slo in ("availability", "first_token", "quality"):  # exported at 0 from the start, so that rate() has a base
    SLO_EVENTS.labels(_slo)
    SLO_BAD_EVENTS.labels(_slo)


SLO_BURN_HELP = "Error ratio over the window / error budget (1: the 30-day budget lasts exactly 30 days)"
SLO_LEFT_HELP = "Share of the error budget of the last 30 days not yet spent (negative: overspent)"


class SloCollector:
    """Each SLO's target, burn rates over 1h/6h/3d and error budget left over the SLO period, computed from the
    exchanges on record at each scrape (kb.ops.slo.slo_report: one aggregate query over the last 30 days' rows
    by the created_at index), so that every web process reports the same figures."""

    def describe(self):
        yield GaugeMetricFamily("kb_slo_objective", "SLO target (share of good events)", labels=["slo"])
        yield GaugeMetricFamily(
            "kb_slo_burn_rate", "Error ratio over the window / error budget", labels=["slo", "window"]
        )
        yield GaugeMetricFamily("kb_slo_budget_remaining", SLO_LEFT_HELP, labels=["slo"])

    def collect(self):
        from kb.ops import slo

        objective = GaugeMetricFamily("kb_slo_objective", "SLO target (share of good events)", labels=["slo"])
        for definition in slo.slo_definitions():
            objective.add_metric([definition.name], definition.target)
        yield objective  # from settings: the alert rules need it even when the database does not answer
        try:
            report = slo.slo_report()
        except Exception as error:  # no database, or not migrated yet: say nothing rather than break /metrics
            logger.warning("SLO metrics unavailable: %s", error)
            return
        burn = GaugeMetricFamily(
            "kb_slo_burn_rate", "Error ratio over the window / error budget", labels=["slo", "window"]
        )
        left = GaugeMetricFamily("kb_slo_budget_remaining", SLO_LEFT_HELP, labels=["slo"])
        for status in report:
            for figure in status.shown_windows:
                burn.add_metric([status.name, figure.window], figure.burn_rate)
            left.add_metric([status.name], status.budget_remaining)
        yield burn
        yield left


REGISTRY.register(SloCollector())

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware(AroundRequest):
    """Counts and times requests; async-capable, so that async views and streams stay on the event loop."""

    def before(self, request) -> float:
        return time.perf_counter()

    def after(self, request, response, started: float) -> None:
        if response is None:
            return
        HTTP_LATENCY.observe(time.perf_counter() - started)
        # Clients choose the method: bound the label's values so that series cannot grow without limit.
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(method, str(response.status_code)).inc()


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
