"""Choose the coverage decision's settings on dev sets only: the pre-model gate (KB_EVIDENCE_MIN_SCORE), the
extractive answerer's answerability model (`kb.llm.extractive.Answerability`) and its threshold
(KB_EXTRACTIVE_MIN_PROBABILITY).

For every question of every dev set the passages are retrieved once as the ask path retrieves them (hybrid
search on the set's isolated index, `replays`: the gate's score on all KB_ANSWER_PASSAGES, the first
`extractive.PASSAGES` for the answerer) and every quotable unit is scored once; fitting and the threshold sweep
then replay the answerer's decision without touching the database or the model.
The model is a logistic regression over `extractive.FEATURES`, each set and within it answerable and
unanswerable questions weighted alike (a big set does not outvote a small one; doc2dial's all-answerable sets
weigh as one class). The threshold maximises the objective, each set weighted alike: the share of answerable
questions answered with their facts, the share not refused, and (where a set has them) the share of
unanswerable questions refused. `leave_one_out` fits and chooses again without each set and reports on it: a
setting that only holds on the sets it was chosen on shows there.

The model also reads the question and its best unit together (`extractive.pair_features`: the embedding
model's vector of the pair, 384 numbers), shrunk harder than the named signals (PAIR_SHRINK). It is fitted
on the policy and dialogue dev sets, not on squad-dev: with squad-dev among them the other sets'
leave-one-out figures fell (mean objective of their five rows 0.725 against 0.788 at PAIR_SHRINK 30; only
blind-clinic's held). squad-dev is scored with the chosen model and reported (`calibrate_answers.CHECK_SETS`),
never fitted on; so are blind-hotel and blind-council (stop 39: fitting on them as well did not raise the
held-out objective).

The weights that score units (`extractive.WEIGHTS`) were chosen by a grid on the dev sets of stop 24 and are
kept fixed here: the model's features are made with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from django.conf import settings

from kb.answers.pipeline.evidence import evidence_score
from kb.answers.pipeline.retrieve import leg_passages
from kb.evaluation.answers.golden import GoldenItem
from kb.evaluation.answers.metrics import fact_found
from kb.llm import extractive
from kb.llm.extractive import Answerability, Scored
from kb.llm.providers import Passage

# The gate refuses only what is clearly unrelated: below the score of (nearly) every answerable dev question
# of every set, with a margin. Choosing it per set at a 2% false-refusal rate was tried and did not hold:
# chosen without the blind handbook it came out at 0.775 and refused 27% of that set's answerable questions.
GATE_QUANTILE = 0.005
GATE_MARGIN = 0.02

THRESHOLDS = tuple(round(0.1 + 0.05 * n, 2) for n in range(15))  # 0.1 .. 0.8
# Chosen leaving one set out on the five fitted dev sets (mean objective of the six rows, squad-dev's included,
# C = 1): 3 -> 0.734, 10 -> 0.746, 30 -> 0.761, 60 -> 0.739, 100 -> 0.743, 200 -> 0.727; no pair features 0.704.
PAIR_SHRINK = 30.0
C = 1.0  # inverse L2 strength on the standardised features; 0.1 and 1.0 were compared leaving one set out


@dataclass(frozen=True)
class Case:
    """One question with what the ask path would give the answerer."""

    item: GoldenItem
    gate: float | None
    passages: tuple[Passage, ...]
    scored: tuple[Scored, ...]
    query: str = ""  # what the answerer reads when not the question as typed: a follow-up's query (`replays`)
    inputs: tuple[float, ...] = ()  # the answerability model's inputs, pair features too (`with_inputs`)

    @property
    def question(self) -> str:
        return self.query or self.item.question


@dataclass(frozen=True)
class Replay:
    """What the ask path does with one question: the text it searches for, and the text the answerer reads."""

    search: str
    question: str


def replays(items: Sequence[GoldenItem]) -> dict[str, Replay]:
    """Each question as the ask path handles it. A first question is searched normalised (`kb.text.normalise`, as
    the caches need it; the answerer reads it as typed). A follow-up (`follows`, or earlier turns in `context`)
    is rewritten into a standalone query (`followup.standalone_query`) after the previous turn's search query, and
    both the search and the answerer read that. Replaying follow-ups as bare questions ("and once I hit 10
    years?") would fit the decision on questions the answerer never sees. The ask path's history holds answered
    turns only: a follow-up of an injection attempt (blocked) or of an unanswerable question (refused) is replayed
    as a first question, assuming each earlier turn got the outcome it should."""
    from kb.answers.followup import search_queries, standalone_query
    from kb.evaluation.answers.golden import USER
    from kb.text import normalise

    by_id = {item.id: item for item in items}
    done: dict[str, Replay] = {}

    def answered(item: GoldenItem) -> bool:
        return item.answerable and not item.injection

    def replay_of(item: GoldenItem) -> Replay:
        if item.id not in done:
            followed = by_id.get(item.follows) if item.follows is not None else None
            if followed is not None and answered(followed):
                query = standalone_query(item.question, replay_of(followed).search)
                done[item.id] = Replay(query, query)
            elif item.context:  # earlier turns recorded as answered (evaluation runner, `conversation_from_context`)
                earlier = search_queries([text for role, text in item.context if role == USER])
                query = standalone_query(item.question, earlier[-1] if earlier else None)
                done[item.id] = Replay(query, query)
            else:
                done[item.id] = Replay(normalise(item.question), item.question)
        return done[item.id]

    for item in items:
        replay_of(item)
    return done


def spread(items: Sequence[GoldenItem], limit: int | None) -> list[GoldenItem]:
    """At most `limit` of `items`, evenly spaced through the set (golden files are written kind by kind, so the
    first N would all be answerable lookups); all of them without a limit."""
    if limit is None or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def cases_retrieve(items: Iterable[GoldenItem], limit: int | None = None) -> list[Case]:
    """Retrieve and score every question (or `limit` of them, `spread`) on the current (isolated) index;
    injections are left out. Each question is replayed as the ask path handles it (`replays`, made from the whole
    set, so a follow-up keeps its conversation): searched for the passages it would be given, the gate's score on
    all of them, the first `extractive.PASSAGES` scored for the answerer."""
    from ingest.models import Chunk, ReadScope
    from kb.search.retrieval import search_in_scope

    items = list(items)
    replayed = replays(items)
    scope = ReadScope.all_documents()
    cases = []
    for item in spread([item for item in items if not item.injection], limit):
        search, question = replayed[item.id].search, replayed[item.id].question
        # All the passages the ask path retrieves (the gate reads them all), the answerer the first PASSAGES.
        result = search_in_scope(search, scope, settings.KB_ANSWER_PASSAGES, legs_best=leg_passages())
        hits = result.hits[: extractive.PASSAGES]
        flagged = set(
            Chunk.objects.filter(pk__in=[hit.chunk_id for hit in hits], untrusted=True).values_list("pk", flat=True)
        )
        passages = tuple(
            Passage(n, hit.title, hit.heading, hit.pages, hit.text, untrusted=hit.chunk_id in flagged)
            for n, hit in enumerate(hits, 1)
        )
        scored = tuple(extractive.scored_units(question, passages)) if passages else ()
        cases.append(with_inputs(Case(item, evidence_score(result), passages, scored, question)))
    return cases


def with_inputs(case: Case) -> Case:
    """The case with the answerability model's inputs made once (one pair pass of the embedding model), for
    the fits and threshold sweeps that replay its decision many times; a case that has them is returned as is."""
    if case.inputs or len(case.scored) < extractive.MODEL_MIN_UNITS:
        return case  # made already, or decided without the model (`extractive.decide`)
    inputs = extractive.answerability_inputs(case.question, case.passages, case.scored)
    return dataclasses.replace(case, inputs=tuple(inputs))


def answer_of(case: Case, model: Answerability, threshold: float, gate: float) -> str | None:
    """The answer's quoted text as the answerer would give it; None for a refusal (gate or answerer)."""
    if case.gate is None or case.gate < gate:
        return None
    inputs = case.inputs[: len(model.features)] if case.inputs else None
    chosen = extractive.decide(
        case.question, case.passages, case.scored, threshold=threshold, model=model, inputs=inputs
    )
    return extractive.render(chosen, case.passages) if chosen else None


def figures(cases: Sequence[Case], model: Answerability, threshold: float, gate: float) -> dict:
    answerable = refused_answerable = with_facts = facts_stated = facts_in_context = 0
    unanswerable = refused_unanswerable = 0
    for case in cases:
        answer = answer_of(case, model, threshold, gate)
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


def model_fit(
    sets: Mapping[str, Sequence[Case]], c: float = C, *, pair: bool = True, pair_shrink: float = PAIR_SHRINK
) -> Answerability:
    """The logistic model over FEATURES on every case of the sets with inputs (`with_inputs`), each (set,
    answerable) group weighted alike, fitted as the injection classifier is (`train_injection.fit_logistic`); the
    product reads the numbers."""
    import numpy as np

    from kb.evaluation.train_injection import fit_logistic

    rows, labels, groups = [], [], []
    for name, cases in sets.items():
        for case in cases:
            if case.inputs:  # made by `with_inputs`; the cases without are decided without the model
                inputs = case.inputs
                rows.append(list(inputs) if pair else list(inputs[: len(extractive.FEATURES)]))
                labels.append(int(case.item.answerable))
                groups.append((name, case.item.answerable))
    if len(set(labels)) < 2:
        raise ValueError("the dev sets need both answerable and unanswerable questions to fit on")
    x = np.asarray(rows, dtype=np.float64)
    if np.isnan(x).any():  # a signal not measured for a question (`extractive.word_matches`): the mean, as read
        x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    # The pair features are many and each weak: shrunk harder than the named signals. Standardising them to
    # 1/PAIR_SHRINK of a unit's spread multiplies their L2 penalty by PAIR_SHRINK squared.
    scale[len(extractive.FEATURES) :] *= pair_shrink
    counts = {group: groups.count(group) for group in set(groups)}
    sample = np.asarray([len(groups) / counts[group] for group in groups])
    # C as scikit-learn's LogisticRegression reads it (penalty 1/(2C) against the summed weighted loss), which
    # fit_logistic's mean loss takes as l2 = 1 / (C * total weight).
    coef, intercept = fit_logistic(
        (x - mean) / scale, np.asarray(labels, dtype=np.float64), sample, 1.0 / (c * sample.sum())
    )
    return Answerability(
        mean=tuple(_significant(v) for v in mean),
        scale=tuple(_significant(v) for v in scale),
        coef=tuple(_significant(v) for v in coef),
        intercept=_significant(intercept),
        pair_dimensions=x.shape[1] - len(extractive.FEATURES),
    )


def _significant(value: float) -> float:
    """Six significant digits: what the shipped JSON keeps (a pair feature's spread can be under 1e-3)."""
    return float(f"{float(value):.6g}")


def threshold_choose(sets: Mapping[str, Sequence[Case]], model: Answerability, gate: float) -> tuple[float, float]:
    best: tuple[float, float] | None = None
    for threshold in THRESHOLDS:
        score = objective([figures(cases, model, threshold, gate) for cases in sets.values()])
        if best is None or score > best[0]:
            best = (score, threshold)
    assert best is not None
    return best[1], round(best[0], 4)


def calibrate(sets: Mapping[str, Sequence[Case]], checks: Mapping[str, Sequence[Case]] | None = None) -> dict:
    """Settings chosen on all the given (dev) sets, their figures, the leave-one-set-out table, and the figures
    of `checks` (dev sets scored with the chosen settings, never fitted on)."""
    sets = {name: [with_inputs(case) for case in cases] for name, cases in sets.items()}
    checks = {name: [with_inputs(case) for case in cases] for name, cases in (checks or {}).items()}
    gate = gate_choose(sets)
    model = model_fit(sets)
    threshold, score = threshold_choose(sets, model, gate)
    leave_one_out: dict[str, dict] = {}
    report = {
        "gate": gate,
        "threshold": threshold,
        "model": model.as_json(),
        "objective": score,
        "per_set": {name: figures(cases, model, threshold, gate) for name, cases in sets.items()},
        "leave_one_out": leave_one_out,
        "checks": {name: figures(cases, model, threshold, gate) for name, cases in checks.items()},
    }
    if len(sets) > 1:
        for held_out, cases in sets.items():
            others = {name: c for name, c in sets.items() if name != held_out}
            if not any(not case.item.answerable for c in others.values() for case in c):
                continue  # nothing to fit a refusal on without it
            others_gate = gate_choose(others)
            others_model = model_fit(others)
            others_threshold, _ = threshold_choose(others, others_model, others_gate)
            leave_one_out[held_out] = {
                "gate": others_gate,
                "threshold": others_threshold,
                "figures": figures(cases, others_model, others_threshold, others_gate),
            }
    return report
