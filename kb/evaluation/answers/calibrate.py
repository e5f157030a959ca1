"""Choose the coverage decision's settings on dev sets only: the pre-model gate (KB_EVIDENCE_MIN_SCORE) and the
extractive answerer's weights (`kb.llm.extractive.Weights`).

For every question of every dev set the passages are retrieved once as the ask path retrieves them (hybrid
search on the set's isolated index, k = KB_ANSWER_PASSAGES) and every quotable unit is scored once; the sweep
then replays the answerer's decision for each candidate setting without touching the database or the model.
The objective gives every set the same weight (a big set does not outvote a small one): the share of
answerable questions answered with their facts, the share not refused, and (where a set has them) the share of
unanswerable questions refused. `leave_one_out` chooses again without each set and reports on it: a setting
that only holds on the sets it was chosen on shows there.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from django.conf import settings

from kb.answers.pipeline.evidence import evidence_score
from kb.evaluation.answers.golden import GoldenItem
from kb.evaluation.answers.metrics import fact_found
from kb.llm import extractive
from kb.llm.extractive import Scored, Weights
from kb.llm.providers import Passage

# The gate refuses only what is clearly unrelated: below the score of (nearly) every answerable dev question
# of every set, with a margin. Choosing it per set at a 2% false-refusal rate was tried and did not hold:
# chosen without the blind handbook it came out at 0.775 and refused 27% of that set's answerable questions.
GATE_QUANTILE = 0.005
GATE_MARGIN = 0.02

GRID = {
    "keywords": (0.0, 0.2, 0.35, 0.5),
    "kind": (0.0, 0.05, 0.1),
    "answer": (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
    "keep": (0.06, 0.12),
    "named": (0.0, 0.1, 0.2, 1.0),
}


@dataclass(frozen=True)
class Case:
    """One question with what the ask path would give the answerer."""

    item: GoldenItem
    gate: float | None
    passages: tuple[Passage, ...]
    scored: tuple[Scored, ...]


def cases_retrieve(
    items: Iterable[GoldenItem], *, question_of: Callable[[GoldenItem], str] | None = None
) -> list[Case]:
    """Retrieve and score every question on the current (isolated) index; injections are left out."""
    from ingest.models import Chunk, ReadScope
    from kb.search.retrieval import search_in_scope

    scope = ReadScope.all_documents()
    cases = []
    for item in items:
        if item.injection:
            continue
        question = question_of(item) if question_of else item.question
        result = search_in_scope(question, scope, settings.KB_ANSWER_PASSAGES)
        flagged = set(
            Chunk.objects.filter(pk__in=[hit.chunk_id for hit in result.hits], untrusted=True).values_list(
                "pk", flat=True
            )
        )
        passages = tuple(
            Passage(n, hit.title, hit.heading, hit.pages, hit.text, untrusted=hit.chunk_id in flagged)
            for n, hit in enumerate(result.hits, 1)
        )
        scored = tuple(extractive.scored_units(question, passages)) if passages else ()
        cases.append(Case(item, evidence_score(result), passages, scored))
    return cases


def answer_of(case: Case, weights: Weights, gate: float) -> str | None:
    """The answer's quoted text as the answerer would give it; None for a refusal (gate or answerer)."""
    if case.gate is None or case.gate < gate:
        return None
    chosen = extractive.decide(case.item.question, case.passages, case.scored, weights)
    return extractive.render(chosen, case.passages) if chosen else None


def figures(cases: Sequence[Case], weights: Weights, gate: float) -> dict:
    answerable = refused_answerable = with_facts = facts_stated = facts_in_context = 0
    unanswerable = refused_unanswerable = 0
    for case in cases:
        answer = answer_of(case, weights, gate)
        if case.item.answerable:
            answerable += 1
            refused_answerable += answer is None
            if case.item.must_include:
                with_facts += 1
                facts_stated += answer is not None and all(fact_found(f, answer) for f in case.item.must_include)
                context = " ".join(p.text for p in case.passages)
                facts_in_context += all(fact_found(f, context) for f in case.item.must_include)
        else:
            unanswerable += 1
            refused_unanswerable += answer is None
    refused = refused_answerable + refused_unanswerable
    return {
        "answerable": answerable,
        "unanswerable": unanswerable,
        "false_refusal_rate": _rate(refused_answerable, answerable),
        "refusal_recall": _rate(refused_unanswerable, unanswerable),
        "refusal_precision": _rate(refused_unanswerable, refused) if unanswerable else None,
        "must_include_recall": _rate(facts_stated, with_facts),
        "context_recall": _rate(facts_in_context, with_facts),
    }


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def objective(per_set: Sequence[dict]) -> float:
    total = 0.0
    for f in per_set:
        parts = [1 - (f["false_refusal_rate"] or 0.0)]
        if f["must_include_recall"] is not None:
            parts.append(f["must_include_recall"])
        if f["refusal_recall"] is not None:
            parts.append(f["refusal_recall"])
        total += sum(parts) / len(parts)
    return total / max(len(per_set), 1)


def gate_choose(sets: Mapping[str, Sequence[Case]]) -> float:
    """Below all but GATE_QUANTILE of every set's answerable questions, by GATE_MARGIN."""
    limits = []
    for cases in sets.values():
        scores = sorted(c.gate if c.gate is not None else -1.0 for c in cases if c.item.answerable)
        if scores:
            limits.append(scores[int(GATE_QUANTILE * len(scores))])
    return round(min(limits) - GATE_MARGIN, 3) if limits else 0.0


def weights_choose(sets: Mapping[str, Sequence[Case]], gate: float) -> tuple[Weights, float]:
    best: tuple[float, Weights] | None = None
    names = list(GRID)
    for values in itertools.product(*(GRID[name] for name in names)):
        weights = dataclasses.replace(extractive.WEIGHTS, **dict(zip(names, values, strict=True)))
        score = objective([figures(cases, weights, gate) for cases in sets.values()])
        if best is None or score > best[0]:
            best = (score, weights)
    assert best is not None
    return best[1], round(best[0], 4)


def calibrate(sets: Mapping[str, Sequence[Case]]) -> dict:
    """Settings chosen on all the given (dev) sets, their figures, and the leave-one-set-out table."""
    gate = gate_choose(sets)
    weights, score = weights_choose(sets, gate)
    leave_one_out: dict[str, dict] = {}
    report = {
        "gate": gate,
        "weights": dataclasses.asdict(weights),
        "objective": score,
        "per_set": {name: figures(cases, weights, gate) for name, cases in sets.items()},
        "leave_one_out": leave_one_out,
    }
    if len(sets) > 1:
        for held_out, cases in sets.items():
            others = {name: c for name, c in sets.items() if name != held_out}
            others_gate = gate_choose(others)
            others_weights, _ = weights_choose(others, others_gate)
            leave_one_out[held_out] = {
                "gate": others_gate,
                "weights": dataclasses.asdict(others_weights),
                "figures": figures(cases, others_weights, others_gate),
            }
    return report
