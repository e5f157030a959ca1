"""Analytics per route (issue #19): questions, cost and feedback per router tier, read from the audit log."""

from __future__ import annotations

import datetime as dt

from django.urls import reverse

from kb.audit import analytics, services
from kb.audit.models import AuditEvent, AuditKind


def test_analytics_counts_questions_cost_and_feedback_per_route(empty_log, employee, client, knowledge_admin):
    rows = [("fast", 0.001, False), ("fast", 0.002, False), ("strong", 0.03, True), ("", 0.0, False)]
    for n, (tier, cost, residency) in enumerate(rows):
        routing = {"tier": tier, "why": [], "chain": [], "residency": residency} if tier else {}
        services.audit_record(
            kind=AuditKind.EXCHANGE,
            actor=employee,
            data={"exchange_id": n, "question": f"Q{n}", "outcome": "answered", "cost_usd": cost, "routing": routing},
        )
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 0, "rating": "down"})
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 0, "rating": "up"})
    services.audit_record(kind=AuditKind.FEEDBACK, actor=employee, data={"exchange_id": 2, "rating": "down"})
    first = AuditEvent.objects.order_by("seq").first()
    assert first is not None
    since = first.created_at.replace(hour=0, minute=0, second=0, microsecond=0)
    report = analytics.analytics_between(since, since + dt.timedelta(days=2))
    by_tier = {row.tier: row for row in report.routes}
    assert (by_tier["fast"].questions, by_tier["fast"].helpful, by_tier["fast"].not_helpful) == (2, 1, 0)
    assert by_tier["fast"].cost_usd == 0.003 and by_tier["strong"].cost_usd == 0.03
    assert (by_tier["strong"].not_helpful, by_tier["strong"].internal_only) == (1, 1)
    assert by_tier["none"].questions == 1
    client.force_login(knowledge_admin)
    page = client.get(reverse("audit_analytics")).content.decode()
    assert "<h2>Routes</h2>" in page and "<td>strong</td>" in page
