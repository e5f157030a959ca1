"""`[n]` markers in an answer: checked against the passages given, turned into citations, and renumbered for the
reader.

The model sees its passages numbered 1..k in retrieval order and cites whichever it uses ([2], [5], [7]); the
reader sees the sources numbered in order of first use, without gaps ([1], [2], [3]). `as_shown` does that once,
at the end of the output guard: the answer, its citations and the grounding rows returned, stored and audited
all carry the reader's numbers, and each citation keeps the number of the passage it names (`passage`, the
`n` of the exchange's recorded passages), so the audit still says which passage given to the model a source is."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kb.guard.output import answer_sentences, claim_text
from kb.text import keywords, split_sentences

# [1], [2, 3], [2; 3] (a run like [1][2] is two markers).
MARKER = re.compile(r"\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")
QUOTE_MAX_CHARS = 400


def _numbers(marker: re.Match[str]) -> list[int]:
    """The numbers of one marker: [2] gives [2], [2, 3] gives [2, 3]."""
    return [int(part) for part in re.split(r"\s*[,;]\s*", marker.group(1))]


@dataclass(frozen=True)
class Source:
    """A passage as given to the model, numbered from 1."""

    n: int
    chunk_id: int
    document_id: int
    title: str
    heading: str
    page: str
    text: str


@dataclass
class Parsed:
    answer: str  # with invalid markers removed and lists split into single markers
    cited: list[int]  # valid numbers, in order of first use
    invalid: list[int]


def parse(answer: str, valid: set[int]) -> Parsed:
    cited: list[int] = []
    invalid: list[int] = []

    def replace(match: re.Match[str]) -> str:
        kept = []
        for number in _numbers(match):
            if number in valid:
                kept.append(number)
                if number not in cited:
                    cited.append(number)
            else:
                invalid.append(number)
        return "".join(f"[{number}]" for number in kept)

    cleaned = MARKER.sub(replace, answer)
    # A removed marker leaves its spaces behind: " ." reads badly.
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned) if invalid else cleaned
    return Parsed(cleaned, cited, invalid)


def citations(answer: str, cited: list[int], sources: Mapping[int, Source]) -> list[dict]:
    """One citation per cited passage, quoting the passage's sentence closest to the claims that cite it."""
    claims: dict[int, list[str]] = {n: [] for n in cited}
    for sentence in answer_sentences(answer):
        for match in MARKER.finditer(sentence):
            for number in _numbers(match):
                if number in claims:
                    claims[number].append(claim_text(MARKER.sub("", sentence)))
    result = []
    for n in cited:
        source = sources[n]
        result.append(
            {
                "n": n,
                "document_id": source.document_id,
                "title": source.title,
                "heading": source.heading,
                "page": source.page,
                "chunk_id": source.chunk_id,
                "quote": best_quote(source.text, " ".join(claims[n])),
            }
        )
    return result


def best_quote(text: str, claim: str) -> str:
    """The passage sentence sharing the most words with the claim (the first sentence if none do)."""
    spans = split_sentences(text)
    if not spans:
        return text[:QUOTE_MAX_CHARS]
    wanted = keywords(claim)
    best = max(spans, key=lambda span: (len(wanted & keywords(text[span[0] : span[1]])), -span[0]))
    quote = " ".join(text[best[0] : best[1]].split())
    return quote if len(quote) <= QUOTE_MAX_CHARS else quote[: QUOTE_MAX_CHARS - 1].rstrip() + "…"


@dataclass(frozen=True)
class Shown:
    """An answer as the reader sees it: sources numbered 1, 2, 3 ... in order of first use."""

    answer: str
    citations: list[dict]
    grounding: list[dict]


def _numbers_in(answer: str) -> list[int]:
    found: list[int] = []
    for match in MARKER.finditer(answer):
        for number in _numbers(match):
            if number not in found:
                found.append(number)
    return found


def as_shown(answer: str, citations: Sequence[dict], grounding: Sequence[dict] = ()) -> Shown:
    """The answer's markers, its citations and its grounding rows with the reader's numbers (see the module's
    docstring). A marker that names no citation is dropped, as the page would not show it; applying this twice
    changes nothing."""
    by_n = {citation["n"]: citation for citation in citations}
    order = [n for n in _numbers_in(answer) if n in by_n]
    order += [n for n in by_n if n not in order]  # cited by the draft, no longer in the text: last
    shown = {n: position for position, n in enumerate(order, 1)}

    def replace(match: re.Match[str]) -> str:
        return "".join(f"[{shown[n]}]" for n in _numbers(match) if n in shown)

    renumbered = [{**by_n[n], "n": shown[n], "passage": by_n[n].get("passage", n)} for n in order]
    rows = []
    for row in grounding:
        passages = row.get("passages", row.get("cited", []))
        # The passages it was scored against keep their own numbers; `cited` is what the reader sees for them.
        rows.append({**row, "cited": [shown[n] for n in row.get("cited", []) if n in shown], "passages": passages})
    text = MARKER.sub(replace, answer)
    if any(n not in shown for n in _numbers_in(answer)):
        text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)  # as `parse` leaves it after removing a marker
    return Shown(text, renumbered, rows)
