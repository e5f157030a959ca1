"""`[n]` markers in an answer: checked against the passages given, and turned into citations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kb.guard.output import answer_sentences
from kb.text import keywords, split_sentences

# [1], [2, 3], [2; 3] (a run like [1][2] is two markers).
MARKER = re.compile(r"\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]")
QUOTE_MAX_CHARS = 400


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
        numbers = [int(part) for part in re.split(r"\s*[,;]\s*", match.group(1))]
        kept = []
        for number in numbers:
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
            for part in re.split(r"\s*[,;]\s*", match.group(1)):
                number = int(part)
                if number in claims:
                    claims[number].append(MARKER.sub("", sentence))
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
