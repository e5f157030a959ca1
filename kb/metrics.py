"""Prometheus metrics for the web process, exposed at /metrics."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter("kb_http_requests_total", "HTTP requests handled", ["method", "status"])
HTTP_LATENCY = Histogram(
    "kb_http_request_duration_seconds",
    "Time to produce the response (streaming bodies excluded)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READY_CHECK = Gauge("kb_ready_check", "Last /readyz result per check (1 ok, 0 failing)", ["check"])


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        HTTP_LATENCY.observe(time.perf_counter() - started)
        # Clients choose the method: bound the label's values so that series cannot grow without limit.
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(method, str(response.status_code)).inc()
        return response


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
