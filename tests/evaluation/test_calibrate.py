"""Choosing the gate and the extractive weights on dev sets: replayed decisions, the gate rule, leave one out."""

from __future__ import annotations

from kb.evaluation.answers import calibrate
from kb.evaluation.answers.golden import GoldenItem
from kb.llm.extractive import SENTENCE, WEIGHTS, Scored, Unit
from kb.llm.providers import Passage

TEXT = "The hotel limit in Amsterdam is 180 euros a night."
PASSAGE = Passage(1, "Travel", "Hotels", "", TEXT)


def case(
    question: str, *, answerable: bool, similarity: float, gate: float = 1.0, facts=("180 euros",)
) -> calibrate.Case:
    item = GoldenItem(question, question, answerable, ("t.md",) if answerable else (), None, "",
                      tuple(facts) if answerable else (), "lookup" if answerable else "near_miss")  # fmt: skip
    unit = Unit(0, 0, SENTENCE, TEXT)
    return calibrate.Case(item, gate, (PASSAGE,), (Scored(unit, similarity, 0.0, False),))


def test_a_case_is_answered_only_when_its_best_unit_clears_the_bar_and_the_gate():
    assert "180 euros" in calibrate.answer_of(case("hotel limit?", answerable=True, similarity=0.7), WEIGHTS, 0.45)
    assert calibrate.answer_of(case("hotel limit?", answerable=True, similarity=0.3), WEIGHTS, 0.45) is None
    assert calibrate.answer_of(case("hotel limit?", answerable=True, similarity=0.9, gate=0.2), WEIGHTS, 0.45) is None


def test_figures_count_refusals_and_facts_per_set():
    cases = [
        case("a", answerable=True, similarity=0.8),
        case("b", answerable=True, similarity=0.2),
        case("c", answerable=False, similarity=0.1),
        case("d", answerable=False, similarity=0.9),
    ]
    got = calibrate.figures(cases, WEIGHTS, 0.0)
    assert got["false_refusal_rate"] == 0.5 and got["refusal_recall"] == 0.5 and got["refusal_precision"] == 0.5
    assert got["must_include_recall"] == 0.5 and got["context_recall"] == 1.0


def test_the_gate_sits_below_nearly_every_answerable_question_of_every_set():
    first = [case(str(n), answerable=True, similarity=0.8, gate=0.5 + n / 100) for n in range(10)]
    second = [case(str(n), answerable=True, similarity=0.8, gate=0.9) for n in range(10)]
    assert calibrate.gate_choose({"first": first, "second": second}) == round(0.5 - calibrate.GATE_MARGIN, 3)


def test_calibration_chooses_a_bar_that_separates_and_reports_each_set_left_out():
    one = [case(f"a{n}", answerable=True, similarity=0.75) for n in range(5)]
    one += [case(f"u{n}", answerable=False, similarity=0.42) for n in range(5)]
    two = [case(f"b{n}", answerable=True, similarity=0.7) for n in range(5)]
    two += [case(f"v{n}", answerable=False, similarity=0.38) for n in range(5)]
    report = calibrate.calibrate({"one": one, "two": two})
    assert 0.42 < report["weights"]["answer"] <= 0.7
    assert report["per_set"]["one"]["false_refusal_rate"] == 0 and report["per_set"]["one"]["refusal_recall"] == 1
    assert set(report["leave_one_out"]) == {"one", "two"}
