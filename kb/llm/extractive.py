"""The offline answer: quote what in the passages answers the question, or say that nothing does.

The passages are cut into quotable units: sentences, list items (steps) and table rows, a row always with its
table's header row (the chunker repeats it in every chunk that holds part of a table). Each unit is scored by
meaning (cosine of the embedding model's vectors of the question and the unit in its section's context), by
the question's keywords it holds, and by whether it holds the kind of thing asked (an amount, a duration or
date, a person or team, steps). Whether to quote at all is decided by a small logistic model over signals of
the question and its scored units (`Answerability`: how the best unit stands out from the others, the share
of the question's words the passages hold, named things of the question no passage mentions, how well the best
unit matches each of the question's words, the question's length ...) and over the question and its best unit read
together by the embedding model (`pair_features`), fitted on dev sets with `manage.py calibrate_answers
--write-model` (kb/llm/data/answerability.json); with fewer units than the model was fitted on, the bar that preceded it
decides. Below `KB_EXTRACTIVE_MIN_PROBABILITY` the answer is the prompt's "not covered", which the ask path shows
as a refusal with the nearest documents. A passage flagged at ingestion as reading like
instructions to a model is never quoted; the answer says that one was withheld.

The weights, the model and its threshold were chosen on dev sets only (the demo set, blind-handbook,
blind-clinic, blind-retail, doc2dial dev; SQuAD dev, blind-hotel and blind-council checked, not fitted on;
`kb.evaluation.answers.calibrate`), never on the test sets (see the README's "Extractive answer").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from kb.text import keyword_spans, keywords, respell, split_sentences, word_counts

if TYPE_CHECKING:
    from kb.llm.providers import Passage

EXTRACTIVE_LABEL = "Extractive answer: quoted from the documents, not written by a language model."
NOT_COVERED = "The knowledge base does not cover this question."
WITHHELD = "One passage was withheld: it reads like instructions to a language model, not like policy."
# At most MAX_UNITS units, those within `Weights.keep` of the best: the pair that states the asked fact most
# often on the six dev sets while their answers stay under 500 characters (about 80 words, read at a glance) on
# average on every one of them (replayed, stop 35; 3 / 0.12 before: README, "Four quotes within 0.16").
MAX_UNITS = 4
MAX_CHARS = 900
# The answerer reads the first PASSAGES passages given to it: the answerability model was fitted on the top 8
# of every dev question (`manage.py calibrate_answers`), and a language model is given more (KB_ANSWER_PASSAGES).
PASSAGES = 8
MIN_SENTENCE_CHARS = 12
EMBEDDED = 24  # units embedded per question, the likeliest by words, kind and rank (see `scored_units`)
PREFILTER_RANK = 0.04  # per retrieval rank, in that ordering

SENTENCE, ROW, STEP = "sentence", "row", "step"
_ROW = re.compile(r"\S.*\|.*\S")
_STEP = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")


@dataclass(frozen=True)
class Weights:
    """How a unit's score is made and what score answers. Chosen on dev sets (module docstring)."""

    keywords: float = 0.2  # per share of the question's keywords the unit holds
    kind: float = 0.0  # the unit holds the kind of thing asked (0 scored best on dev; it still ranks units for
    # embedding in `scored_units`)
    rank: float = 0.01  # per retrieval rank of the unit's passage
    keep: float = 0.16  # further units within this of the best are quoted too (with MAX_UNITS)


WEIGHTS = Weights()


@dataclass(frozen=True)
class Unit:
    rank: int  # of its passage among the passages
    order: int  # within its passage
    kind: str  # SENTENCE, ROW or STEP
    text: str
    header: str = ""  # a row's table header row

    def context(self, heading: str) -> str:
        """What is embedded: a row as "column: value" pairs, anything under its section heading."""
        text = self.text
        if self.kind == ROW and self.header:
            pairs = zip(_cells(self.header), _cells(self.text), strict=False)
            text = "; ".join(f"{name}: {value}" for name, value in pairs)
        return f"{heading}: {text}" if heading else text


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def units_of(passage: Passage, rank: int) -> list[Unit]:
    """Sentences, list items and table rows (each with its header row), in the passage's order."""
    units: list[Unit] = []
    lines = passage.text.split("\n")
    header = ""
    prose: list[str] = []

    def flush() -> None:
        text = " ".join(prose)
        for start, end in split_sentences(text):
            sentence = " ".join(text[start:end].split())
            if len(sentence) >= MIN_SENTENCE_CHARS:
                units.append(Unit(rank, len(units), SENTENCE, sentence))
        prose.clear()

    for line in lines:
        stripped = line.strip()
        if _ROW.fullmatch(stripped):
            flush()
            if set(stripped) <= set("|-: "):
                continue  # a Markdown separator row
            if not header:  # the first row of a table (any other line resets `header`)
                header = stripped
                continue
            units.append(Unit(rank, len(units), ROW, stripped, header))
            continue
        header = ""
        if _STEP.match(line):
            flush()
            step = " ".join(stripped.split())
            if len(step) >= MIN_SENTENCE_CHARS:
                units.append(Unit(rank, len(units), STEP, step))
        elif stripped:
            prose.append(stripped)
        else:
            flush()
    flush()
    return units


# --- what a question asks for ---------------------------------------------------------------------------------

_ASKS = {
    "amount": re.compile(
        r"\b(how much|how many|amount|cost|costs|price|pay|paid|allowance|budget|limit|rate|reimburs\w*|"
        r"per diem|spend|claim|fee|salary|percentage|max(imum)?|min(imum)?)\b",
        re.I,
    ),
    "time": re.compile(
        r"\b(how long|how soon|how fast|how quickly|how often|when|until|deadline|days?|weeks?|months?|years?|"
        r"hours?|minutes?|within|by when|what time|date|notice|period|retain|kept|keep)\b",
        re.I,
    ),
    "who": re.compile(r"\b(who|whom|whose|which team|contact|call|email|e-mail|phone|reach|ask)\b", re.I),
    "steps": re.compile(
        r"\b(how (do|can|should) (i|we|you)|what (do|should) (i|we)|what now|steps?|procedure|process|"
        r"what happens|what to do)\b",
        re.I,
    ),
}
_HAS = {
    "amount": re.compile(r"[$€£¥]\s?\d|\d\s?(%|percent|euros?|eur|usd|gbp|cad|dollars?|pounds?)\b|\b\d[\d,.]*\b", re.I),
    "time": re.compile(
        r"\b\d+\s*(working |business |calendar )?(days?|weeks?|months?|years?|hours?|minutes?|h)\b|"
        r"\b(january|february|march|april|may|june|july|august|september|october|november|december|"
        r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|daily|weekly|monthly|annually|"
        r"immediately|within|before|after|until)\b|\d{1,2}[:.]\d{2}",
        re.I,
    ),
    "who": re.compile(
        r"\b[A-Z][a-z]+ [A-Z][a-z]+\b|@|\+?\d[\d ()-]{6,}\d|(?i:\b(team|desk|officer|manager|department|"
        r"hr|it|finance|director|lead|line)\b)"
    ),
    "steps": re.compile(r"^(?:[-*\u2022]|\d{1,2}[.)])\s|\b(must|should|first|then|report|contact|submit|fill)\b", re.I),
}


def asks_for(question: str) -> set[str]:
    return {kind for kind, pattern in _ASKS.items() if pattern.search(question)}


def holds(unit: Unit, wanted: set[str]) -> bool:
    return any(_HAS[kind].search(unit.text) for kind in wanted) or (unit.kind == STEP and "steps" in wanted)


# --- named things -------------------------------------------------------------------------------------------

_NAMED = re.compile(r"\b(?:[A-Z]{1,3}\d{1,4}|(?:19|20)\d\d|[A-Z][a-z]{2,}(?:[ -][A-Z][a-z]{2,})*)\b")
_CODE = re.compile(r"\d")
_COMMON = frozenset(
    "i im i'm my we our you your what when where which who whom why how can could should would will is are am do "  # noqa: SIM905
    "does did the a an and or but if it its this that these those there here hi hello hey please thanks thank "
    "dear ok okay so also any anyone anybody someone just still yes no not".split()
)


def named_things(question: str) -> list[str]:
    """Codes, years and proper names in the question (not a capitalised first word or a common word)."""
    found = []
    for match in _NAMED.finditer(question):
        word = match.group()
        before = question[: match.start()].rstrip()
        if (not before or before[-1] in ".!?:;\"'(") and not any(ch.isdigit() for ch in word):
            continue  # a capital that only starts a sentence
        if word.casefold() in _COMMON:
            continue
        found.append(word)
    return found


def missing_named(question: str, passages: Sequence[Passage]) -> list[str]:
    """The question's named things that no passage (text, title or heading) mentions."""
    haystack = " ".join(f"{p.title} {p.heading} {p.text}" for p in passages).casefold()
    return [thing for thing in named_things(question) if thing.casefold() not in haystack]


# --- scoring ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    unit: Unit
    similarity: float
    keyword_share: float
    holds_kind: bool

    def score(self, weights: Weights) -> float:
        return (
            self.similarity
            + weights.keywords * self.keyword_share
            + weights.kind * self.holds_kind
            - weights.rank * self.unit.rank
        )


def scored_units(question: str, passages: Sequence[Passage]) -> list[Scored]:
    """The quotable units of the trusted passages with their signals. Only the EMBEDDED units most likely by
    words, kind and passage rank are embedded (embedding every sentence of 8 passages costs ~0.5 s on 2 cores)."""
    from kb.search import embeddings

    units = [unit for rank, p in enumerate(passages) if not p.untrusted for unit in units_of(p, rank)]
    if not units:
        return []
    # Employees misspell ("milage", "aproval"): words the passages lack are read as the passages' nearest word.
    vocabulary = word_counts(f"{p.title} {p.heading} {p.text}" for p in passages if not p.untrusted)
    question = respell(question, vocabulary, embeddings.is_whole_token)
    wanted_words = keywords(question)
    wanted_kinds = asks_for(question)
    signals = []
    for unit in units:
        words = keywords(unit.text + " " + unit.header + " " + passages[unit.rank].heading)
        share = len(wanted_words & words) / len(wanted_words) if wanted_words else 0.0
        signals.append((unit, share, holds(unit, wanted_kinds)))
    signals.sort(key=lambda s: -(s[1] + 0.1 * s[2] - PREFILTER_RANK * s[0].rank))
    signals = signals[:EMBEDDED]
    texts = [question] + [unit.context(passages[unit.rank].heading) for unit, _, _ in signals]
    vectors = embeddings.embed(texts)
    similarities = vectors[1:] @ vectors[0]
    return [
        Scored(unit, float(similarity), share, kind)
        for (unit, share, kind), similarity in zip(signals, similarities, strict=True)
    ]


def choose(scored: Sequence[Scored], weights: Weights) -> list[Unit]:
    """The units to quote: the best, and those close behind it, within the length budget."""
    if not scored:
        return []
    ranked = sorted(scored, key=lambda s: -s.score(weights))
    best = ranked[0].score(weights)
    chosen: list[Unit] = []
    length = 0
    for candidate in ranked:
        if len(chosen) >= MAX_UNITS or candidate.score(weights) < best - weights.keep:
            break
        if chosen and length + len(candidate.unit.text) > MAX_CHARS:
            continue
        chosen.append(candidate.unit)
        length += len(candidate.unit.text)
    return chosen


# --- answerability ------------------------------------------------------------------------------------------

MODEL_PATH = Path(__file__).resolve().parent / "data" / "answerability.json"
# The model's range: 99% of dev questions had 18 or more scored units, none fewer than 12 (a tiny corpus, a
# one-paragraph document). Below it the best unit must score FEW_UNITS_BAR, the bar chosen by a grid on stop 24's
# dev sets before the model.
MODEL_MIN_UNITS = 12
FEW_UNITS_BAR = 0.5
FEW_UNITS_NAMED = 0.1
FEATURES = (
    "best_score",  # the best unit's score (similarity + keyword share - rank, `WEIGHTS`)
    "best_similarity",  # the highest similarity of any unit
    "best_keyword_share",  # the best-scoring unit's share of the question's keywords
    "over_median",  # the highest similarity minus the median unit's: one unit stands out
    "over_second",  # ... minus the second highest
    "missing_named",  # named things of the question no passage mentions (a city, a year, a code)
    "missing_code",  # 1 when one of them holds a digit (a P5 priority, 2027)
    "question_words_found",  # the share of the question's keywords anywhere in the passages
    "question_length",  # log(1 + words): employees' longer questions carry their situation
    "top3_similarity",  # the mean of the three highest similarities: the best relative to its neighbours
    "least_matched_word",  # the question's word the best unit matches least (`word_matches`): a near miss's
    "mean_matched_word",  # ... and the mean over its words
)
PAIR = "pair_"  # then one feature per dimension of the question and its best unit read together (`pair_features`)


def answerability_features(question: str, passages: Sequence[Passage], scored: Sequence[Scored]) -> list[float]:
    """The signals `Answerability` weighs, in FEATURES order (`scored` must not be empty)."""
    best = max(scored, key=lambda s: s.score(WEIGHTS))
    similarities = sorted((s.similarity for s in scored), reverse=True)
    median = statistics.median(similarities)
    second = similarities[1] if len(similarities) > 1 else similarities[0]
    missing = missing_named(question, passages)
    wanted = keywords(question)
    found: set[str] = set()
    for p in passages:
        found |= keywords(f"{p.title} {p.heading} {p.text}")
    return [
        best.score(WEIGHTS),
        similarities[0],
        best.keyword_share,
        similarities[0] - median,
        similarities[0] - second,
        float(len(missing)),
        float(any(_CODE.search(thing) for thing in missing)),
        len(wanted & found) / len(wanted) if wanted else 0.0,
        math.log1p(len(question.split())),
        sum(similarities[:3]) / len(similarities[:3]),
        *_least_and_mean(word_matches(question, best.unit.context(passages[best.unit.rank].heading))),
    ]


def word_matches(question: str, unit: str) -> list[float]:
    """For each keyword of the question (`keyword_spans`), how well the unit matches it: the highest cosine
    between the word's tokens and any token of the unit, in context (`embeddings.token_vectors`; a word of
    several tokens takes their mean); ascending. The pooled similarity of a question about Dublin to the row
    for London is high; the word "Dublin" itself finds no close token there. A word with no token of its own
    (cut off by the model's length, or inside a token the tokenizer could not read, "[UNK]" covering an emoji
    and its neighbours) is left out; [] when nothing could be matched (no keywords, an empty unit): the model
    then reads the dev sets' average (`_least_and_mean`). Chosen as two features (the least and the mean) over
    variants on dev sets (README)."""
    from kb.search import embeddings

    spans = keyword_spans(question)
    if not spans or not unit.strip() or not embeddings.has_token_offsets():
        return []  # nothing to match, or a tokenizer (another KB_EMBEDDING_MODEL) that cannot say where words are
    (question_spans, question_vectors), (_, unit_vectors) = embeddings.token_vectors([question, unit])
    if not len(question_vectors) or not len(unit_vectors):
        return []
    closest = (question_vectors @ unit_vectors.T).max(axis=1)
    matches = []
    for start, end in spans:
        overlapping = [i for i, (a, b) in enumerate(question_spans) if a < end and b > start]
        if overlapping:
            matches.append(float(closest[overlapping].mean()))
    return sorted(matches)


def _least_and_mean(matches: list[float]) -> tuple[float, float]:
    """The features of `word_matches`; NaN, not measured, for none: `Answerability.probability` reads it as
    the mean of the questions it was fitted on (no dev question had none), so it neither quotes nor refuses."""
    return (matches[0], sum(matches) / len(matches)) if matches else (math.nan, math.nan)


def pair_features(question: str, passages: Sequence[Passage], scored: Sequence[Scored]) -> list[float]:
    """The embedding model's vector of the question and the best unit read together as one input
    (`embeddings.embed_pairs`), one feature per dimension. A near miss ("the hotel limit in Dublin" against the
    row for London) can show there, where the cosine of their separate vectors averages the one missing thing
    away; the model's weights on them were fitted on dev sets like the rest (`calibrate`)."""
    from kb.search import embeddings

    best = max(scored, key=lambda s: s.score(WEIGHTS))
    pair = embeddings.embed_pairs([question], [best.unit.context(passages[best.unit.rank].heading)])
    return [float(value) for value in pair[0]]


def answerability_inputs(
    question: str, passages: Sequence[Passage], scored: Sequence[Scored], *, pair: bool = True
) -> list[float]:
    """What `Answerability.probability` reads: FEATURES, then (`pair`) the pair features."""
    inputs = answerability_features(question, passages, scored)
    return inputs + pair_features(question, passages, scored) if pair else inputs


@dataclass(frozen=True)
class Answerability:
    """P(the passages answer the question): a logistic model over standardised FEATURES and, when
    `pair_dimensions`, as many pair features (`answerability_inputs`)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    pair_dimensions: int = 0

    @property
    def features(self) -> list[str]:
        return list(FEATURES) + [f"{PAIR}{i}" for i in range(self.pair_dimensions)]

    def probability(self, features: Sequence[float]) -> float:
        """A feature that could not be measured (NaN) counts as the fitted questions' mean: no contribution."""
        z = self.intercept + sum(
            c * (x - m) / s
            for c, x, m, s in zip(self.coef, features, self.mean, self.scale, strict=True)
            if not math.isnan(x)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def as_json(self) -> dict:
        return {"features": self.features, **dataclasses.asdict(self)}


def answerability_from_json(data: dict) -> Answerability:
    names = list(data.get("features", ()))
    pair_dimensions = len(names) - len(FEATURES)
    expected = list(FEATURES) + [f"{PAIR}{i}" for i in range(max(pair_dimensions, 0))]
    if names != expected:
        raise ValueError(f"the answerability model's features {names[:12]}... are not FEATURES (+ pair features)")
    fields = {name: tuple(data[name]) for name in ("mean", "scale", "coef")}
    if any(len(values) != len(names) for values in fields.values()):
        raise ValueError("the answerability model needs one mean, scale and coefficient per feature")
    return Answerability(**fields, intercept=float(data["intercept"]), pair_dimensions=pair_dimensions)


@functools.cache
def answerability() -> Answerability:
    model = answerability_from_json(json.loads(MODEL_PATH.read_text(encoding="utf-8")))
    if model.pair_dimensions and model.pair_dimensions != settings.KB_EMBEDDING_DIMENSIONS:
        raise ValueError(
            f"the answerability model ({MODEL_PATH}) was fitted on {model.pair_dimensions}-dimensional pair "
            f"features and the embedding model makes {settings.KB_EMBEDDING_DIMENSIONS}: fit it again on the dev "
            "sets with `manage.py calibrate_answers --write-model`"
        )
    return model


def _steps_after(units: list[Unit], all_units: list[Unit]) -> list[Unit]:
    """A chosen step brings the steps that follow it in its list (procedure questions get the steps)."""
    extended = list(units)
    for unit in units:
        if unit.kind != STEP and not unit.text.endswith(":"):
            continue  # a step, or the sentence that introduces a list of them
        following = [u for u in all_units if u.rank == unit.rank and u.order > unit.order]
        for step in following:
            if step.kind != STEP or len(extended) >= MAX_UNITS + 3:
                break
            if step not in extended:
                extended.append(step)
    return extended


def render(units: Sequence[Unit], passages: Sequence[Passage]) -> str:
    """Quotes in retrieval then document order; rows of one table as one small table with its header."""
    blocks: list[str] = []
    ordered = sorted(units, key=lambda u: (u.rank, u.order))
    index = 0
    while index < len(ordered):
        unit = ordered[index]
        n = passages[unit.rank].n
        if unit.kind == ROW:
            rows = [unit]
            while (
                index + 1 < len(ordered)
                and ordered[index + 1].kind == ROW
                and ordered[index + 1].rank == unit.rank
                and ordered[index + 1].header == unit.header
            ):
                index += 1
                rows.append(ordered[index])
            header = _cells(unit.header)
            table = [_table_line(header), "| " + " | ".join("---" for _ in header) + " |"]
            table += [_table_line(_cells(row.text), len(header)) for row in rows]
            blocks.append("\n".join(f"> {line}" for line in table) + f"\n>\n> [{n}]")
        else:
            blocks.append(f"> {unit.text} [{n}]")
        index += 1
    return "\n\n".join(blocks)


def _table_line(cells: list[str], width: int | None = None) -> str:
    cells = list(cells) + [""] * max(0, (width or 0) - len(cells))
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells[: width or len(cells)]) + " |"


def _clears_the_bar(question: str, passages: Sequence[Passage], scored: Sequence[Scored], weights: Weights) -> bool:
    """Stop 24's decision: the best unit scores FEW_UNITS_BAR (FEW_UNITS_NAMED more when a named thing of the
    question is in no passage); a missing code or year, or a missing name when the answer is a table row, refuses."""
    missing = missing_named(question, passages)
    if any(_CODE.search(thing) for thing in missing):
        return False
    best = max(scored, key=lambda s: s.score(weights))
    if best.score(weights) < FEW_UNITS_BAR + (FEW_UNITS_NAMED if missing else 0.0):
        return False
    return not (missing and best.unit.kind == ROW)


def decide(
    question: str,
    passages: Sequence[Passage],
    scored: Sequence[Scored],
    *,
    threshold: float,
    model: Answerability | None = None,
    weights: Weights = WEIGHTS,
    inputs: Sequence[float] | None = None,
) -> list[Unit]:
    """The units to quote, or [] for "not covered" (see the module docstring). `inputs`: the model's inputs when
    already made (`answerability_inputs`; calibration replays decisions many times)."""
    if not scored:
        return []
    if len(scored) < MODEL_MIN_UNITS:
        # Fewer units than any dev question had: the model's "stands out from the others" signals are out of
        # their range; the decision that preceded the model takes over.
        if not _clears_the_bar(question, passages, scored, weights):
            return []
    else:
        model = model or answerability()
        if inputs is None:
            inputs = answerability_inputs(question, passages, scored, pair=model.pair_dimensions > 0)
        if model.probability(inputs) < threshold:
            return []
    chosen = choose(scored, weights)
    if chosen and "steps" in asks_for(question):
        chosen = _steps_after(chosen, [s.unit for s in scored])
    return chosen


def extractive_answer(question: str, passages: Sequence[Passage]) -> str:
    """The quoted answer, or NOT_COVERED (with a note when a passage was withheld); "" without passages."""
    passages = passages[:PASSAGES]
    if not passages:
        return ""
    withheld = any(p.untrusted for p in passages)
    note = f"\n\n*{WITHHELD}*" if withheld else ""
    scored = scored_units(question, passages)
    chosen = decide(question, passages, scored, threshold=settings.KB_EXTRACTIVE_MIN_PROBABILITY)
    if not chosen:
        return NOT_COVERED + note
    return f"*{EXTRACTIVE_LABEL}*\n\n" + render(chosen, passages) + note
