"""What an SLO report costs each /metrics scrape (kb/ops/slo.py: one aggregate query over the SLO period's rows).

`make bench` runs it (marker `bench`); results go to var/bench/slo_report.json. 50,000 exchanges in the last 30
days (~1,700 a day: a company of a few thousand employees asking daily) and as many older ones (which the report
must not count), each with the JSON a real one carries (eight passages, latency, four graded sentences,
an answer of 600 characters), 5 % rated; then the report and the /metrics body are timed.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from kb import metrics
from kb.answers.models import Exchange, Feedback, Outcome
from kb.ops import slo

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

RECENT = 50_000
OLDER = 50_000
SEED = 20261202
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "slo_report.json"
MAX_REPORT_S = 2.0  # well inside a scrape's default 10 s timeout, at twice the assumed traffic


def _exchange(rng: random.Random, user, now, age: timedelta) -> Exchange:
    failed = rng.random() < 0.003
    return Exchange(
        user=user,
        question="What is the hotel limit per night in Amsterdam?",
        outcome=Outcome.FAILED if failed else rng.choice([Outcome.ANSWERED] * 3 + [Outcome.CACHED]),
        answer="The limit is 180 euros per night [1]. " * 16,
        fallback_used=rng.random() < 0.01,
        passages=[{"n": i, "chunk_id": i, "document_id": i, "fused_score": 0.03, "similarity": 0.7} for i in range(8)],
        latency={"overhead_ms": 120.0, "first_token_ms": rng.lognormvariate(7.3, 0.5), "total_ms": 6000.0},
        grounding=[
            {"sentence": "The limit is 180 euros.", "cited": [1], "score": 0.8, "supported": rng.random() > 0.02}
            for _ in range(4)
        ],
        created_at=now - age,
    )


def test_slo_report_cost(employee):
    rng = random.Random(SEED)
    now = timezone.now()
    period = slo.SLO_PERIOD.total_seconds()
    started = time.perf_counter()
    for count, low, high in ((RECENT, 0, period), (OLDER, period + 60, 4 * period)):
        for offset in range(0, count, 5000):
            rows = [
                _exchange(rng, employee, now, timedelta(seconds=rng.uniform(low, high)))
                for _ in range(min(5000, count - offset))
            ]
            created = Exchange.objects.bulk_create(rows)
            Feedback.objects.bulk_create(
                Feedback(exchange=e, user=employee, rating=rng.choice(["up", "down"]))
                for e in created
                if rng.random() < 0.05
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE answers_exchange; ANALYZE answers_feedback")
    loaded_s = time.perf_counter() - started

    slo.slo_report(now=now)  # warm the cache
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        report = slo.slo_report(now=now)
        timings.append(time.perf_counter() - t0)
    scrapes = []
    for _ in range(3):
        t0 = time.perf_counter()
        body, _ = metrics.render()
        scrapes.append(time.perf_counter() - t0)
    assert b"kb_slo_burn_rate" in body

    # The report's scan of the period's rows (by the index on created_at, or the whole table when the period is
    # much of it, as here: half).
    plan = Exchange.objects.filter(created_at__gt=now - slo.SLO_PERIOD, created_at__lte=now).explain()

    figures = {
        "exchanges_in_period": RECENT,
        "exchanges_older": OLDER,
        "load_s": round(loaded_s, 1),
        "slo_report_s": {"p50": round(statistics.median(timings), 3), "max": round(max(timings), 3)},
        "metrics_render_s": {"p50": round(statistics.median(scrapes), 3), "max": round(max(scrapes), 3)},
        "plan": plan,
        "report": {
            s.name: {"30d": [s.period.events, s.period.bad], "burn_3d": round(s.burn_rate("3d"), 3)} for s in report
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    availability = next(s for s in report if s.name == "availability")
    assert 0.8 * RECENT < availability.period.events <= RECENT
    assert statistics.median(timings) < MAX_REPORT_S
