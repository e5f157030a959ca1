"""Reads for the analytics page, computed from the audit log's exchange and feedback events.

The log is the record of every exchange, kept for the retention period; aggregating it in SQL (one pass
per question asked of it, on the (kind, created_at) index) keeps the page fast without copies to maintain.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db import connection

from ingest.models import Document

TOP = 10  # rows in each "top" list
NEVER_CITED_SHOWN = 50

_WINDOW = "kind = %s AND created_at >= %s AND created_at < %s"
# A cancelled exchange's latency is when its client left, not how long an answer took.
_LATENCY = (
    "CASE WHEN data->>'outcome' <> 'cancelled' AND jsonb_typeof(data->'latency_ms') = 'number' "
    "THEN (data->>'latency_ms')::float8 END"
)
_DAILY = f"""
SELECT {{day}}
       count(*),
       count(*) FILTER (WHERE data->>'outcome' = 'refused'),
       count(*) FILTER (WHERE data->>'fallback_used' = 'true'),
       count(*) FILTER (WHERE data->>'outcome' = 'cached'),
       count(*) FILTER (WHERE data->>'outcome' IN ('failed', 'cancelled', 'blocked')),
       coalesce(sum(CASE WHEN jsonb_typeof(data->'cost_usd') = 'number' THEN (data->>'cost_usd')::numeric END), 0),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY {_LATENCY}),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY {_LATENCY})
FROM audit_auditevent
WHERE {_WINDOW}
{{group}}
"""
_FEEDBACK = f"""
SELECT rating, count(*) FROM (
    SELECT DISTINCT ON (exchange_id) data->>'rating' AS rating FROM audit_auditevent
    WHERE {_WINDOW} AND exchange_id IS NOT NULL ORDER BY exchange_id, seq DESC
) latest GROUP BY rating
"""
_TOP_REFUSED = f"""
SELECT min(data->>'question'), count(*), max(created_at) FROM audit_auditevent
WHERE {_WINDOW} AND data->>'outcome' = 'refused'
GROUP BY lower(btrim(data->>'question')) ORDER BY 2 DESC, 3 DESC LIMIT {TOP}
"""
# Per route (issue #19): questions, cost, and the latest rating of each answer (a rating may come after the window).
_ROUTES = """
SELECT coalesce(nullif(e.data->'routing'->>'tier', ''), 'none'), count(*),
       coalesce(sum(CASE WHEN jsonb_typeof(e.data->'cost_usd') = 'number' THEN (e.data->>'cost_usd')::numeric END), 0),
       count(*) FILTER (WHERE f.rating = 'up'), count(*) FILTER (WHERE f.rating = 'down'),
       count(*) FILTER (WHERE e.data->'routing'->>'residency' = 'true')
FROM audit_auditevent e
LEFT JOIN (
    SELECT DISTINCT ON (exchange_id) exchange_id, data->>'rating' AS rating FROM audit_auditevent
    WHERE kind = 'feedback' AND exchange_id IS NOT NULL ORDER BY exchange_id, seq DESC
) f ON f.exchange_id = e.exchange_id
WHERE e.kind = %s AND e.created_at >= %s AND e.created_at < %s
GROUP BY 1 ORDER BY 2 DESC
"""
_CITED = """
SELECT (citation->>'document_id')::bigint, count(DISTINCT e.seq)
FROM audit_auditevent e
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(e.data->'citations') = 'array' THEN e.data->'citations' ELSE '[]'::jsonb END
) AS citation
WHERE e.kind = %s AND e.created_at >= %s AND e.created_at < %s AND citation ? 'document_id'
GROUP BY 1
"""


@dataclass
class Day:
    day: dt.date | None
    questions: int = 0
    refused: int = 0
    fallback: int = 0
    cached: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None

    def rate(self, count: int) -> float | None:
        return 100.0 * count / self.questions if self.questions else None

    @property
    def refusal_rate(self) -> float | None:
        return self.rate(self.refused)

    @property
    def fallback_rate(self) -> float | None:
        return self.rate(self.fallback)

    @property
    def cache_hit_rate(self) -> float | None:
        return self.rate(self.cached)


@dataclass
class RouteRow:
    """One router tier (fast, strong; default without KB_ROUTES; none for exchanges that ended before routing)."""

    tier: str
    questions: int
    cost_usd: float
    helpful: int
    not_helpful: int
    internal_only: int  # exchanges under the internal-models-only rule


@dataclass
class CitedDocument:
    title: str
    document_id: int
    version: int
    exchanges: int
    detail: str = ""  # what tells it apart from another current document with the same title


@dataclass
class Analytics:
    since: dt.datetime
    until: dt.datetime
    days: list[Day]
    total: Day
    feedback_up: int = 0
    feedback_down: int = 0
    top_refused: list[tuple[str, int]] = field(default_factory=list)
    most_cited: list[CitedDocument] = field(default_factory=list)
    never_cited: list[Document] = field(default_factory=list)
    never_cited_total: int = 0
    # What tells a never-cited document apart from another current document with the same title, by id.
    never_cited_details: dict[int, str] = field(default_factory=dict)
    routes: list[RouteRow] = field(default_factory=list)

    @property
    def never_cited_listed(self) -> list[tuple[Document, str]]:
        return [(doc, self.never_cited_details.get(doc.pk, "")) for doc in self.never_cited]

    @property
    def feedback_total(self) -> int:
        return self.feedback_up + self.feedback_down

    @property
    def helpful_rate(self) -> float | None:
        return 100.0 * self.feedback_up / self.feedback_total if self.feedback_total else None


def _day(row, day: dt.date | None) -> Day:
    questions, refused, fallback, cached, failed, cost, p50, p95 = row
    return Day(
        day=day,
        questions=questions,
        refused=refused,
        fallback=fallback,
        cached=cached,
        failed=failed,
        cost_usd=float(cost),
        p50_ms=None if p50 is None else float(p50),
        p95_ms=None if p95 is None else float(p95),
    )


def analytics_between(since: dt.datetime, until: dt.datetime) -> Analytics:
    window: list[str | dt.datetime] = ["exchange", since, until]
    with connection.cursor() as cursor:
        cursor.execute(
            _DAILY.format(day="(created_at AT TIME ZONE 'UTC')::date,", group="GROUP BY 1 ORDER BY 1"), window
        )
        by_day = {row[0]: _day(row[1:], row[0]) for row in cursor.fetchall()}
        cursor.execute(_DAILY.format(day="", group=""), window)
        total = _day(cursor.fetchone(), None)
        cursor.execute(_FEEDBACK, ["feedback", since, until])
        ratings = dict(cursor.fetchall())
        cursor.execute(_TOP_REFUSED, window)
        top_refused = [(question, count) for question, count, _ in cursor.fetchall()]
        cursor.execute(_CITED, window)
        cited = dict(cursor.fetchall())
        cursor.execute(_ROUTES, window)
        routes = [RouteRow(tier, n, float(cost), up, down, internal) for tier, n, cost, up, down, internal in cursor]
    days = []
    day = since.date()
    while day < until.date() or (day == until.date() and until.time() != dt.time.min):
        days.append(by_day.get(day, Day(day=day)))
        day += dt.timedelta(days=1)
    result = Analytics(
        since=since,
        until=until,
        days=days,
        total=total,
        feedback_up=ratings.get("up", 0),
        feedback_down=ratings.get("down", 0),
        top_refused=top_refused,
        routes=routes,
    )
    _cited_documents(result, cited)
    return result


def _cited_documents(result: Analytics, cited: dict[int, int]) -> None:
    """Most cited documents (versions of one document counted together) and current ones never cited."""
    versions = Document.objects.filter(pk__in=list(cited)).values_list("pk", "lineage")
    by_lineage: dict = {}
    for pk, lineage in versions:
        by_lineage[lineage] = by_lineage.get(lineage, 0) + cited[pk]
    latest: dict = {}  # the newest version of each cited document names it
    for doc in Document.objects.filter(lineage__in=list(by_lineage)).order_by("lineage", "-version"):
        latest.setdefault(doc.lineage, doc)
    ranked = sorted(by_lineage.items(), key=lambda item: (-item[1], latest[item[0]].title.casefold()))[:TOP]
    never = Document.objects.searchable().exclude(lineage__in=list(by_lineage)).order_by("title", "pk")
    result.never_cited_total = never.count()
    result.never_cited = list(never[:NEVER_CITED_SHOWN])
    details = Document.objects.current().same_title_details(
        [latest[lineage].pk for lineage, _ in ranked] + [doc.pk for doc in result.never_cited]
    )
    result.most_cited = [
        CitedDocument(
            title=latest[lineage].title,
            document_id=latest[lineage].pk,
            version=latest[lineage].version,
            exchanges=count,
            detail=details.get(latest[lineage].pk, ""),
        )
        for lineage, count in ranked
    ]
    result.never_cited_details = {doc.pk: details[doc.pk] for doc in result.never_cited if doc.pk in details}
