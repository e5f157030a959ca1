"""Compliance pages (search, one event, verification, export, legal hold) and the analytics page."""

from __future__ import annotations

import datetime as dt
import json
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from ingest.models import Document
from kb.accounts.access import role_required
from kb.accounts.roles import Role, has_role
from kb.audit import analytics, charts, services, tasks
from kb.audit.export import export_response
from kb.audit.filters import EXPORT_FORMATS, AuditFilterForm, AuditFilters
from kb.audit.models import AuditEvent, AuditKind, ChainCheck

PAGE_SIZE = 50
# "Verify now" polls once a second for the result, for at most this many seconds: verifying a million events
# takes 1.5-3 minutes of a worker (KB_AUDIT_VERIFY_INTERVAL_S), so 10 minutes also covers a worker that first
# finishes a document; after that the panel stops asking and says where the result will appear.
VERIFY_POLL_S = 600
ANALYTICS_PERIODS = (7, 30, 90, 365)  # days the analytics page offers
ANALYTICS_DEFAULT_DAYS = 30

compliance_required = role_required(Role.COMPLIANCE)


def analytics_access(view):
    """Knowledge admins (how well documents serve) and Compliance (what was answered) read analytics."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (has_role(request.user, Role.KNOWLEDGE_ADMIN) or has_role(request.user, Role.COMPLIANCE)):
            raise PermissionDenied("This page is for the Knowledge admin and Compliance roles.")
        return view(request, *args, **kwargs)

    return wrapped


BIGINT_MAX = 2**63 - 1


def _whole_number(text: str) -> int | None:
    """A query parameter as a positive bigint, or None for anything else (garbage in a URL is ignored)."""
    if text.isascii() and text.isdigit() and 0 < int(text) <= BIGINT_MAX:
        return int(text)
    return None


def _filters(request) -> tuple[AuditFilterForm, AuditFilters]:
    form = AuditFilterForm(request.GET)
    return form, form.filters() if form.is_valid() else AuditFilters()


@compliance_required
def audit_home(request):
    form, filters = _filters(request)
    events = filters.apply()
    before = _whole_number(request.GET.get("before", ""))
    if before is not None:
        events = events.filter(seq__lt=before)
    rows = list(events.order_by("-seq")[: PAGE_SIZE + 1])
    query = filters.as_query()
    context = {
        "form": form,
        "events": rows[:PAGE_SIZE],
        "older": rows[PAGE_SIZE - 1].seq if len(rows) > PAGE_SIZE else None,
        "paged": before is not None,
        "query": urlencode(query),
        "filtered": bool(query),
        "export_filters": sorted(query.items()),
        "formats": EXPORT_FORMATS,
    }
    if request.htmx and request.htmx.target == "audit-results":  # the search form swaps the results only
        return render(request, "audit/home.html#results", context)
    if request.htmx and request.htmx.target == "audit-verification":  # "Verify now" polls for its result
        after = _whole_number(request.GET.get("verification_after", "")) or 0
        polls = _whole_number(request.GET.get("polls", "")) or 0
        return render(request, "audit/home.html#verification", _verification_context(after=after, polls=polls))
    context.update(
        _verification_context(),
        hold=services.legal_hold_status(),
        retention_days=settings.KB_AUDIT_RETENTION_DAYS,
    )
    return render(request, "audit/home.html", context)


def _verification_context(*, after: int | None = None, polls: int = 0, error: str = "") -> dict:
    """The verification panel: the last check and the newest checkpoint; `after`: a check was started when the
    newest was this id, so it is pending until a newer one exists (`polls`: how often the panel has asked)."""
    check = ChainCheck.objects.order_by("-finished_at", "-id").first()
    pending = after is not None and not error and not ChainCheck.objects.filter(pk__gt=after).exists()
    if pending and polls >= VERIFY_POLL_S:
        pending = False
        error = (
            f"Verification has not finished after {VERIFY_POLL_S // 60} minutes: the worker may be busy or stopped. "
            "Its result will show here when you reload the page; manage.py audit_verify gives it at once."
        )
    return {
        "check": check,
        "pending": pending,
        "after": after or 0,
        "next_poll": polls + 1,
        "verify_error": error,
        "checkpoint": services.checkpoint_status(),
        "verify_every_h": settings.KB_AUDIT_VERIFY_INTERVAL_S / 3600,
        "checkpoint_every_events": settings.KB_AUDIT_CHECKPOINT_EVERY_EVENTS,
        "checkpoint_every_min": settings.KB_AUDIT_CHECKPOINT_EVERY_S / 60,
    }


@compliance_required
def audit_detail(request, seq: int):
    event = get_object_or_404(AuditEvent, seq=seq)
    data = event.data or {}
    context = {
        "event": event,
        "data": data,
        "verifies": event.computed_hash() == event.hash,
        "raw": json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True),
        "previous": AuditEvent.objects.filter(seq__lt=seq).order_by("-seq").values_list("seq", flat=True).first(),
        "next": AuditEvent.objects.filter(seq__gt=seq).order_by("seq").values_list("seq", flat=True).first(),
    }
    if event.kind == AuditKind.EXCHANGE:
        passages = [dict(p) for p in data.get("passages") or []]
        titles = dict(
            Document.objects.filter(pk__in=[p.get("document_id") for p in passages]).values_list("pk", "title")
        )
        for passage in passages:
            passage["title"] = titles.get(passage.get("document_id"), "")
        usage = (data.get("usage") or {}).items()
        latency = (data.get("latency") or {}).items()
        context.update(
            usage=[(name.replace("_", " ").capitalize(), value) for name, value in usage if name != "cost_usd"],
            latency=[(name.removesuffix("_ms").replace("_", " "), ms) for name, ms in latency],
            passages=passages,
            feedback=AuditEvent.objects.filter(kind=AuditKind.FEEDBACK, exchange_id=event.exchange_id).order_by("seq"),
        )
    elif event.kind == AuditKind.FEEDBACK and event.exchange_id:
        context["exchange_event"] = (
            AuditEvent.objects.filter(kind=AuditKind.EXCHANGE, exchange_id=event.exchange_id)
            .values_list("seq", flat=True)
            .first()
        )
    return render(request, "audit/detail.html", context)


@compliance_required
@require_POST  # an export is recorded in the officer's name: a link from another site must not start one
def audit_export(request):
    form = AuditFilterForm(request.POST)
    format = request.POST.get("format", "csv")
    if not form.is_valid() or format not in EXPORT_FORMATS:
        messages.error(request, form.error_text() or f"Choose an export format: {', '.join(EXPORT_FORMATS)}.")
        filters = {name: value for name, value in request.POST.items() if name in form.fields and value}
        return redirect(reverse("audit_home") + "?" + urlencode(filters))
    stream = services.audit_export_begin(
        filters=form.filters(), format=format, actor=request.user, via="audit page", trailer=True
    )
    return export_response(request, stream)


@compliance_required
@require_POST
def audit_verify(request):
    newest = ChainCheck.objects.order_by("-id").values_list("pk", flat=True).first() or 0
    try:
        tasks.chain_verify.delay("page")
    except Exception:  # the broker is down: say so; beat verifies on its schedule anyway
        error = (
            "Verification could not be started: the job queue is not reachable. Run manage.py audit_verify on the "
            "server, or try again later."
        )
        if request.htmx:
            return render(request, "audit/home.html#verification", _verification_context(error=error))
        messages.error(request, error)
    else:
        if request.htmx:  # the panel polls until the check is recorded, then shows its result
            return render(request, "audit/home.html#verification", _verification_context(after=newest))
        messages.info(
            request, "Verification started: it reads every event, and the result appears here when it is done."
        )
    return redirect("audit_home")


@compliance_required
@require_POST
def audit_legal_hold(request):
    active = request.POST.get("active") == "on"
    try:
        services.legal_hold_set(active=active, reason=request.POST.get("reason", ""), actor=request.user)
    except services.AuditError as refused:
        messages.error(request, str(refused))
    else:
        messages.success(
            request,
            "Legal hold placed: nothing will be purged until it is lifted."
            if active
            else "Legal hold lifted: events older than the retention period will be purged on the next run.",
        )
    return redirect("audit_home")


def _count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms"


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def _percent(value: float) -> str:
    return f"{value:.0f}%"


@analytics_access
def audit_analytics(request):
    days = _whole_number(request.GET.get("days", ""))
    period = days if days in ANALYTICS_PERIODS else ANALYTICS_DEFAULT_DAYS
    today = timezone.now().astimezone(dt.UTC).date()
    until = dt.datetime.combine(today + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    report = analytics.analytics_between(until - dt.timedelta(days=period), until)
    labels = [day.day.strftime("%m-%d") for day in report.days if day.day]
    context = {
        "report": report,
        "period": period,
        "periods": ANALYTICS_PERIODS,
        "questions_chart": charts.bar_chart("Questions per day", labels, [d.questions for d in report.days], _count),
        "rates_chart": charts.line_chart(
            "Refusal, fallback and cache-hit rates per day",
            labels,
            {
                "refused": [d.refusal_rate for d in report.days],
                "fallback": [d.fallback_rate for d in report.days],
                "cache hit": [d.cache_hit_rate for d in report.days],
            },
            _percent,
        ),
        "latency_chart": charts.line_chart(
            "Answer latency per day",
            labels,
            {"p50": [d.p50_ms for d in report.days], "p95": [d.p95_ms for d in report.days]},
            _ms,
        ),
        "cost_chart": charts.bar_chart("Model cost per day", labels, [d.cost_usd for d in report.days], _usd),
    }
    return render(request, "audit/analytics.html", context)
