"""The answer taken out: does the extractive answerer notice when its passages stop stating the asked fact?

A near miss ("the hotel limit in Dublin" where a table lists London and Paris) is a question whose passages
share its topic and most of its words but do not answer it. Hand-written near misses are few (16-32 a golden
set), so the refusal recall measured on them moves by several points with one question. This probe makes a near
miss of every answerable question whose facts the passages state: the same question, the same passages with
every unit (sentence, table row, list step; `extractive.units_of`) that states one of its must-include facts
taken out. An answerer that reads whether a passage answers refuses the copy; one that reads only topic and
words answers it as readily as the original. The question is the employee's own, so the copy keeps real
phrasing, and each copy is paired with its original.

Only the extractive answerer's decision is probed (its passages are the first `extractive.PASSAGES`, as the
ask path gives them): retrieval is not run again, so the pre-model gate and the search are not part of it.
A fact is "stated" when its normalised words appear in order (`metrics.fact_in_order`); a copy in which a fact is
still stated after the removal (in a heading, or split across units) is not probed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kb.answers.pipeline.evidence import says_not_covered
from kb.evaluation.answers.metrics import fact_in_order
from kb.llm import extractive
from kb.llm.providers import Passage


@dataclass(frozen=True)
class Probe:
    answered_with: bool  # the extractive answer quotes something with the passages as given
    answered_without: bool | None  # ... and once the units stating the facts are taken out (None: not asked,
    # the original being refused)


def _without_units(passage: Passage, units: Sequence[extractive.Unit]) -> Passage:
    text = passage.text
    for unit in units:
        if unit.kind == extractive.SENTENCE:  # a sentence's whitespace was folded when it was split
            pattern = r"\s+".join(re.escape(word) for word in unit.text.split())
            text = re.sub(pattern, " ", text, count=1)
        else:  # a row (kept as stripped) or a step (its whitespace folded) is one line
            text = "\n".join(
                line for line in text.split("\n") if unit.text not in (line.strip(), " ".join(line.split()))
            )
    return dataclasses.replace(passage, text=text)


def without_facts(passages: Sequence[Passage], facts: Sequence[str]) -> tuple[Passage, ...] | None:
    """The passages with every unit stating one of `facts` taken out; None when no unit states one, or when a
    fact is still stated afterwards (the copy would not be a near miss)."""
    if not facts:
        return None
    changed = False
    out = []
    for rank, passage in enumerate(passages):
        units = [u for u in extractive.units_of(passage, rank) if any(fact_in_order(f, u.text) for f in facts)]
        if units:
            passage = _without_units(passage, units)
            changed = True
        out.append(passage)
    if not changed or any(fact_in_order(f, f"{p.title} {p.heading} {p.text}") for f in facts for p in out):
        return None
    return tuple(out)


def probe(question: str, passages: Sequence[Passage], facts: Sequence[str]) -> Probe | None:
    """The extractive answerer's decision on the passages as given and, when it answers, with the facts taken
    out; None when the copy cannot be made (`without_facts`)."""
    passages = tuple(passages[: extractive.PASSAGES])
    removed = without_facts(passages, facts)
    if removed is None:
        return None
    if not answered(question, passages):
        return Probe(answered_with=False, answered_without=None)
    return Probe(answered_with=True, answered_without=answered(question, removed))


def answered(question: str, passages: Sequence[Passage]) -> bool:
    """The extractive answer quotes something (it neither refuses nor lacks passages)."""
    answer = extractive.extractive_answer(question, passages)
    return bool(answer) and not says_not_covered(answer)
