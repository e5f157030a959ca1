"""Liveness, readiness and metrics endpoints for operators and load balancers."""

from __future__ import annotations

import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from kb import metrics
from kb.llm.resilience import model_status
from kb.search import embeddings

logger = logging.getLogger(__name__)
# What an anonymous caller of /readyz sees of each check.
PUBLIC_FIELDS = frozenset({"ok", "ms", "loaded", "degrades_only"})
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")


def check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    if row is None:
        return {"ok": False, "error": "the vector extension is not installed in this database: run migrations"}
    return {"ok": True, "pgvector": row[0], "embedded": settings.KB_EMBEDDED_DATABASE}


def check_broker() -> dict:
    from kb.celery import app

    # The filesystem broker only needs its folder; ensure_connection proves the others answer.
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.KB_READYZ_TIMEOUT_S)
        transport = conn.transport_cls
    return {"ok": True, "transport": str(transport)}


def check_embeddings() -> dict:
    path = embeddings.model_path()  # raises EmbeddingModelMissing with the reason
    if embeddings.is_loaded():
        return {"ok": True, "model": embeddings.model_id(), "loaded": True}
    error = embeddings.load_error()
    if error:
        return {"ok": False, "error": error}
    return {"ok": False, "model": embeddings.model_id(), "loaded": False, "error": f"loading from {path}"}


CHECKS = {"database": check_database, "broker": check_broker, "embeddings": check_embeddings}


def _run(check) -> dict:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # a failing dependency is a result, not a crash
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@require_GET
@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request):
    results = {}
    # The database check runs here: Django connections belong to the thread that opened them.
    results["database"] = _run(check_database)
    futures = {name: _pool.submit(_run, CHECKS[name]) for name in ("broker", "embeddings")}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=settings.KB_READYZ_TIMEOUT_S + 1)
        except FutureTimeout:
            results[name] = {"ok": False, "error": f"no answer within {settings.KB_READYZ_TIMEOUT_S}s"}
    ready = all(r["ok"] for r in results.values())
    # The model chain degrades rather than fails: with a remote model misconfigured or its breaker open,
    # answers still come from the next link or the extractive answer. Reported, but not "not ready".
    results["models"] = _run(model_status)
    results["models"]["degrades_only"] = True
    for name, result in results.items():
        metrics.READY_CHECK.labels(name).set(1 if result["ok"] else 0)
        if not result["ok"]:
            logger.warning("readiness check %s failing: %s", name, result.get("error"))
    if not (request.user.is_authenticated and request.user.is_staff):
        # Load balancers need only the verdict; exception text names hosts, users and paths. Operators read
        # the detail in the log or signed in as staff.
        results = {name: {k: v for k, v in r.items() if k in PUBLIC_FIELDS} for name, r in results.items()}
    return JsonResponse({"ready": ready, "checks": results}, status=200 if ready else 503)


LOOPBACK = frozenset({"127.0.0.1", "::1"})
# A request a proxy passed on: its REMOTE_ADDR is the proxy's (often loopback), not the caller's.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _metrics_refusal(request) -> HttpResponse | None:
    """Metrics name routes, models and failure counts: they are for the operator's scraper. Callers on this
    machine (not through a proxy) may read them; others need `Authorization: Bearer <KB_METRICS_TOKEN>`."""
    local = request.META.get("REMOTE_ADDR") in LOOPBACK and not any(h in request.META for h in FORWARDING_HEADERS)
    if local:
        return None
    token = settings.KB_METRICS_TOKEN
    if not token:
        return HttpResponse(
            "Metrics are served to this machine only: set KB_METRICS_TOKEN and scrape with "
            "'Authorization: Bearer <token>' from elsewhere.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = HttpResponse(
        "Metrics need 'Authorization: Bearer <KB_METRICS_TOKEN>'.\n",
        status=401,
        content_type="text/plain; charset=utf-8",
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@require_GET
@never_cache
def metrics_view(request):
    refused = _metrics_refusal(request)
    if refused is not None:
        return refused
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
