"""Per configuration, from its exchanges: the figures a rollout is judged by, and the judgement.

Rates (error, fallback, refusal, unsupported, thumbs-down) are compared with a one-sided two-proportion z test
(pooled, by hand: no SciPy at run time): the candidate is worse when its rate exceeds the baseline's by more than
the margin AND the difference is significant at KB_ROLLOUT_SIGNIFICANCE, with at least KB_ROLLOUT_MIN_SAMPLE
questions on each side. First-token p95 and cost per answered question have no test: they are worse past a
relative margin (and, for latency, an absolute one), with the same minimum sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

# The rates, each: (name, numerator column, denominator column).
RATES = (
    ("error_rate", "errors", "questions"),
    ("fallback_rate", "fallbacks", "questions"),
    ("refusal_rate", "refusals", "questions"),
    ("unsupported_rate", "unsupported", "answered"),
    ("thumbs_down_rate", "thumbs_down", "rated"),
)

# Questions are finished exchanges a configuration could answer: not pending, not cancelled by the asker, not
# blocked by a guard before or after (guards do not depend on the configuration). An error is a failed exchange
# or one in which any model call failed (retried or fallen back): a flaky model shows there before askers see it.
# An unsupported answer has a sentence the grounding check did not find in what it cites, or cites nothing.
_FIGURES_SQL = """
SELECT e.configuration_id,
       count(*) AS questions,
       count(*) FILTER (WHERE e.outcome = 'failed'
                        OR jsonb_path_exists(e.attempts, '$[*] ? (@.outcome == "failed")')) AS errors,
       count(*) FILTER (WHERE e.fallback_used) AS fallbacks,
       count(*) FILTER (WHERE e.outcome = 'refused') AS refusals,
       count(*) FILTER (WHERE e.outcome = 'answered') AS answered,
       count(*) FILTER (WHERE e.outcome = 'answered' AND (jsonb_array_length(e.citations) = 0
                        OR jsonb_path_exists(e.grounding, '$[*] ? (@.supported == false)'))) AS unsupported,
       count(f.id) AS rated,
       count(f.id) FILTER (WHERE f.rating = 'down') AS thumbs_down,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY (e.latency ->> 'first_token_ms')::float) AS first_token_p95_ms,
       coalesce(sum(e.cost_usd) FILTER (WHERE e.outcome = 'answered'), 0) AS answered_cost_usd
FROM answers_exchange e
LEFT JOIN answers_feedback f ON f.exchange_id = e.id
WHERE e.configuration_id = ANY(%s) AND e.created_at >= %s
  AND e.outcome NOT IN ('pending', 'cancelled', 'blocked')
GROUP BY e.configuration_id
"""
_COUNTS = ("questions", "errors", "fallbacks", "refusals", "answered", "unsupported", "rated", "thumbs_down")


def configuration_figures(*, configuration_ids: list[int], since) -> dict[int, dict]:
    """{configuration id: figures} over exchanges created at or after `since` (one query)."""
    with connection.cursor() as cursor:
        cursor.execute(_FIGURES_SQL, [configuration_ids, since])
        names = [column.name for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    found = {row.pop("configuration_id"): row for row in rows}
    figures = {}
    for pk in configuration_ids:
        row = found.get(pk) or dict.fromkeys(_COUNTS, 0) | {"first_token_p95_ms": None, "answered_cost_usd": 0}
        counts = {name: int(row[name]) for name in _COUNTS}
        rates = {name: (counts[num] / counts[den] if counts[den] else None) for name, num, den in RATES}
        p95 = row["first_token_p95_ms"]
        cost = float(row["answered_cost_usd"])
        figures[pk] = {
            **counts,
            **{name: None if value is None else round(value, 4) for name, value in rates.items()},
            "first_token_p95_ms": None if p95 is None else round(float(p95), 1),
            "cost_per_answer_usd": round(cost / counts["answered"], 6) if counts["answered"] else None,
        }
    return figures


def one_sided_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """P-value of "rate 1 > rate 2" under the pooled two-proportion z test (normal approximation)."""
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0  # both rates 0 or both 1: nothing is worse
    z = (x1 / n1 - x2 / n2) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Finding:
    metric: str
    candidate: float | None
    baseline: float | None
    worse: bool
    why: str
    p_value: float | None = None

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "worse": self.worse,
            "why": self.why,
            "p_value": None if self.p_value is None else round(self.p_value, 6),
        }


def _rate(metric: str, num: str, den: str, cand: dict, base: dict) -> Finding:
    minimum, margin = settings.KB_ROLLOUT_MIN_SAMPLE, settings.KB_ROLLOUT_RATE_MARGIN
    n1, n2 = cand[den], base[den]
    if n1 < minimum or n2 < minimum:
        return Finding(metric, cand[metric], base[metric], False, f"too few to tell ({n1} / {n2} < {minimum})")
    p = one_sided_p(cand[num], n1, base[num], n2)
    difference = cand[metric] - base[metric]
    worse = difference > margin and p < settings.KB_ROLLOUT_SIGNIFICANCE
    why = f"{cand[metric]:.1%} vs {base[metric]:.1%} ({n1} / {n2}), p={p:.4f}"
    return Finding(metric, cand[metric], base[metric], worse, why, p)


def _relative(metric: str, cand: dict, base: dict, margin: float, absolute: float, count: str) -> Finding:
    minimum = settings.KB_ROLLOUT_MIN_SAMPLE
    c, b = cand[metric], base[metric]
    if cand[count] < minimum or base[count] < minimum or c is None or b is None:
        return Finding(metric, c, b, False, "too few to tell")
    if b == 0:
        return Finding(metric, c, b, False, "nothing to compare with (the current configuration's is 0)")
    worse = c > b * (1 + margin) and c - b > absolute
    return Finding(metric, c, b, worse, f"{c:g} vs {b:g} (margin {margin:.0%})")


def judge(candidate: dict, baseline: dict) -> list[Finding]:
    """Every metric's finding; the candidate is to be rolled back when any is worse."""
    findings = [_rate(metric, num, den, candidate, baseline) for metric, num, den in RATES]
    findings.append(
        _relative("first_token_p95_ms", candidate, baseline, settings.KB_ROLLOUT_LATENCY_MARGIN,
                  settings.KB_ROLLOUT_LATENCY_MARGIN_MS, "questions")
    )  # fmt: skip
    findings.append(
        _relative("cost_per_answer_usd", candidate, baseline, settings.KB_ROLLOUT_COST_MARGIN, 0.0, "answered")
    )
    return findings
