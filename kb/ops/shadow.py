"""Shadow evaluation before exposure: the candidate and the current configuration answer the deployment's golden
set(s) (KB_ROLLOUT_GOLDEN) through `manage.py evaluate_answers`, each in the isolated evaluation index, never the
product's documents or exchanges; the candidate passes when none of KB_ROLLOUT_EVAL_METRICS is worse than the
current one's by more than KB_ROLLOUT_EVAL_TOLERANCE. Slow (minutes for a full set): it runs in a Celery task or
`manage.py ops_rollout evaluate`, never in a web request; the result is stored on the rollout.

The command is called by name, so nothing at run time imports kb.evaluation (GUIDE §2).
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management import CommandError, call_command
from django.test.utils import override_settings

from kb.ops import services
from kb.ops.models import AnswerConfiguration, Rollout, RolloutState

# Metrics where lower is better; every other one named is better higher.
LOWER_IS_BETTER = frozenset({"false_refusal_rate", "injection_leak_rate", "fallback_rate", "ordinary_blocked_rate"})


def _run(configuration: AnswerConfiguration, golden: Path, corpus: Path | None, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "report.json"
        args = ["--golden", str(golden), "--models", ",".join(configuration.chain),
                "--prompt", configuration.prompt_version, "--output", str(output), "--no-html", "--json"]  # fmt: skip
        if corpus is not None:
            args += ["--corpus", str(corpus)]
        if limit:
            args += ["--limit", str(limit)]
        routes = {tier: list(chain) for tier, chain in (configuration.routes or {}).items()}
        with override_settings(KB_ROUTES=routes):
            call_command("evaluate_answers", *args, stdout=io.StringIO(), stderr=io.StringIO())
        report = json.loads(output.read_text())
    return report["configs"][0]["metrics"]


def compare(current: dict, candidate: dict, *, metrics: list[str], tolerance: float) -> list[str]:
    """The metrics on which the candidate is below the current configuration's floor (or above its ceiling)."""
    failures = []
    for name in metrics:
        now, new = current.get(name), candidate.get(name)
        if now is None:
            continue  # nothing measured for the current one: no floor
        if new is None:
            failures.append(f"{name}: not measured for the candidate (current {now:.3f})")
        elif name in LOWER_IS_BETTER and new > now + tolerance:
            failures.append(f"{name}: {new:.3f} above the current {now:.3f} (+{tolerance})")
        elif name not in LOWER_IS_BETTER and new < now - tolerance:
            failures.append(f"{name}: {new:.3f} below the current {now:.3f} (-{tolerance})")
    return failures


def rollout_evaluate(*, rollout_id: int) -> Rollout:
    """Run the shadow evaluation of a rollout and record its verdict."""
    rollout = Rollout.objects.select_related("candidate", "baseline").get(pk=rollout_id)
    if rollout.state != RolloutState.EVALUATING:  # a task queued twice, or the rollout was dropped meanwhile
        return rollout
    sets, failures = [], []
    for golden, corpus in settings.KB_ROLLOUT_GOLDEN:
        try:
            current = _run(rollout.baseline, golden, corpus, settings.KB_ROLLOUT_EVAL_LIMIT)
            candidate = _run(rollout.candidate, golden, corpus, settings.KB_ROLLOUT_EVAL_LIMIT)
        except CommandError as error:
            failures.append(f"{golden.name}: the evaluation could not run: {error}")
            continue
        found = compare(current, candidate, metrics=settings.KB_ROLLOUT_EVAL_METRICS,
                        tolerance=settings.KB_ROLLOUT_EVAL_TOLERANCE)  # fmt: skip
        failures += [f"{golden.name}: {failure}" for failure in found]
        keep = {name: {"current": current.get(name), "candidate": candidate.get(name)}
                for name in settings.KB_ROLLOUT_EVAL_METRICS}  # fmt: skip
        sets.append({"golden": str(golden), "corpus": str(corpus or ""), "metrics": keep, "failures": found})
    evaluation = {
        "sets": sets,
        "failures": failures,
        "limit": settings.KB_ROLLOUT_EVAL_LIMIT,
        "tolerance": settings.KB_ROLLOUT_EVAL_TOLERANCE,
    }
    return services.rollout_evaluation_record(rollout=rollout, evaluation=evaluation, passed=not failures)
