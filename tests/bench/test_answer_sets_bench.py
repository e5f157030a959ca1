"""Every evaluation set side by side (issue #16): `manage.py evaluate_sets` with the extractive answerer on all
sets that are available here (kb/evaluation/answers/sets.py: demo, the blind sets, doc2dial first turns and
follow-ups, SQuAD 2.0; dev and test), one JSON + HTML report.

Results: var/bench/answer_sets.json and .html, each set's full report in var/bench/answer_sets/. The first run
indexes each corpus into its own isolated database (doc2dial's 273 documents and each SQuAD half take minutes
on 2 cores); later runs reuse them. Figures are in the README ("Evaluation sets"); dev sets may be tuned on,
test sets only reported.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from kb.evaluation.answers import metrics
from kb.evaluation.answers.sets import evaluation_sets

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

OUT = Path(settings.BASE_DIR) / "var" / "bench" / "answer_sets.json"


@pytest.mark.timeout(7200)
def test_every_available_evaluation_set_side_by_side(capsys):
    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[answer-sets] {message}", flush=True)

    available = [name for name, s in evaluation_sets().items() if s.unavailable() is None]
    if not available:
        pytest.skip("no evaluation set is available here")
    started = time.perf_counter()
    err = io.StringIO()
    call_command(
        "evaluate_sets", "--role", "all", "--models", "extractive", "--output", str(OUT),
        stdout=io.StringIO(), stderr=err,
    )  # fmt: skip
    report = json.loads(OUT.read_text())
    log(f"{time.perf_counter() - started:.0f} s; skipped: {report['skipped'] or 'none'}")
    for name, result in report["sets"].items():
        shown = ", ".join(f"{row} {result['metrics'].get(row)}" for row in metrics.SET_ROWS)
        log(f"{name} ({result['role']}, index {result['corpus']['build_s']} s, run {result['runtime_s']} s): {shown}")

    assert sorted(report["sets"]) == sorted(available)
    for name, result in report["sets"].items():
        golden = result["golden"]["questions"]
        assert result["metrics"]["questions"] == golden > 0, name
        assert result["metrics"]["fallback_rate"] == 0, name  # the extractive answerer always answers
        if result["metrics"]["answerable"]:
            assert result["metrics"]["hit_at_k"] is not None and result["metrics"]["answer_f1"] is not None, name
