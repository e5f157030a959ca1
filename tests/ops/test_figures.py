"""The rollback judgement: a one-sided two-proportion z test by hand, margins and minimum samples."""

from __future__ import annotations

import math

import pytest

from kb.ops.figures import judge, one_sided_p


def test_the_z_test_matches_the_textbook_value():
    # 30/100 vs 15/100: pooled 0.225, se 0.05905, z 2.540, one-sided p 0.00554 (normal table).
    assert one_sided_p(30, 100, 15, 100) == pytest.approx(0.00554, abs=2e-5)
    assert one_sided_p(15, 100, 30, 100) == pytest.approx(1 - 0.00554, abs=2e-5)  # better is never "worse"
    assert one_sided_p(0, 50, 0, 50) == 1.0 and one_sided_p(50, 50, 50, 50) == 1.0
    assert math.isclose(one_sided_p(10, 40, 10, 40), 0.5)


def figures(questions: int, **counts) -> dict:
    row = {"questions": questions, "errors": 0, "fallbacks": 0, "refusals": 0, "answered": questions,
           "unsupported": 0, "rated": 0, "thumbs_down": 0, "first_token_p95_ms": 400.0,
           "cost_per_answer_usd": 0.002} | counts  # fmt: skip
    for metric, num, den in (("error_rate", "errors", "questions"), ("fallback_rate", "fallbacks", "questions"),
                             ("refusal_rate", "refusals", "questions"), ("unsupported_rate", "unsupported", "answered"),
                             ("thumbs_down_rate", "thumbs_down", "rated")):  # fmt: skip
        row[metric] = row[num] / row[den] if row[den] else None
    return row


def worse(candidate: dict, baseline: dict) -> set[str]:
    return {finding.metric for finding in judge(candidate, baseline) if finding.worse}


def test_one_bad_answer_is_not_enough(settings):
    settings.KB_ROLLOUT_MIN_SAMPLE = 30
    assert worse(figures(3, errors=3), figures(300)) == set()  # 100 % errors, but three questions
    assert worse(figures(30, errors=9), figures(300, errors=3)) == {"error_rate"}  # 30 % vs 1 % at 30


def test_a_difference_within_the_margin_or_not_significant_is_not_worse(settings):
    settings.KB_ROLLOUT_MIN_SAMPLE = 30
    settings.KB_ROLLOUT_RATE_MARGIN = 0.05
    assert worse(figures(1000, refusals=160), figures(1000, refusals=100)) == {"refusal_rate"}  # 16 vs 10 %
    assert worse(figures(40, refusals=8), figures(40, refusals=4)) == set()  # 20 vs 10 %: p=0.11
    assert worse(figures(1000, refusals=130), figures(1000, refusals=100)) == set()  # 3 points: within margin


def test_the_baseline_needs_its_minimum_too(settings):
    settings.KB_ROLLOUT_MIN_SAMPLE = 30
    assert worse(figures(100, errors=50), figures(29)) == set()


def test_latency_and_cost_are_worse_past_their_margins(settings):
    settings.KB_ROLLOUT_MIN_SAMPLE = 30
    slow = figures(50, first_token_p95_ms=1200.0)
    assert worse(slow, figures(50)) == {"first_token_p95_ms"}  # +200 % and +800 ms
    assert worse(figures(50, first_token_p95_ms=700.0), figures(50, first_token_p95_ms=400.0)) == set()  # +300 ms
    assert worse(figures(50, cost_per_answer_usd=0.004), figures(50)) == {"cost_per_answer_usd"}
    assert worse(figures(50, cost_per_answer_usd=0.004), figures(50, cost_per_answer_usd=0.0)) == set()


def test_thumbs_down_count_over_rated_answers_only(settings):
    settings.KB_ROLLOUT_MIN_SAMPLE = 30
    assert worse(figures(500, rated=20, thumbs_down=20), figures(500, rated=40)) == set()  # 20 rated < 30
    assert worse(figures(500, rated=40, thumbs_down=20), figures(500, rated=40, thumbs_down=2)) == {"thumbs_down_rate"}
