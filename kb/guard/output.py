"""Output guards: citations name given passages, each sentence is scored against what it cites, and nothing
leaks (personal data the documents and question did not contain, the system prompt, text of documents the
user may not read). They run on the whole answer; kb/guard/stream.py screens the streamed text sentence by
sentence on the way out."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from kb.guard import pii
from kb.guard.base import Action, Verdict
from kb.llm.providers import EXTRACTIVE_LABEL
from kb.text import keywords, shingles, split_sentences

MARKER = re.compile(r"\[(\d{1,4})\]")
UNSUPPORTED = "[unsupported]"
_WORD = re.compile(r"\w+")
# Sentences too short to carry a claim, introductions ("The documents say:") and the extractive label.
MIN_CLAIM_WORDS = 4


@dataclass
class Source:
    n: int
    chunk_id: int
    document_id: int
    text: str
    vector: np.ndarray | None = None  # the passage's stored embedding; embedded here when missing
    untrusted: bool = False  # flagged at ingestion as instructions to a model: it never supports a sentence


# Passages of documents the asker may not read that share words with a text: (document id, passage text).
UnreadableSearch = Callable[[str], list[tuple[int, str]]]


@dataclass
class OutputContext:
    answer: str
    question: str  # masked
    sources: dict[int, Source]
    system_prompt: str
    cited: list[int]
    invalid: list[int]
    refused: bool
    model: str
    placeholders: dict[str, str] = field(default_factory=dict)
    grounding: list[dict] = field(default_factory=list)
    # None when the asker may read every document (nothing to leak); given by the ask path otherwise.
    unreadable_search: UnreadableSearch | None = None
    topics: Any = None  # the active off-limits topics' matcher (kb.guard.topics.TopicMatcher), given by the ask path
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # claim_key(sentence) -> embedding, shared


def without_markers(text: str) -> str:
    """The text without its [n] markers, and without the space a marker leaves before punctuation."""
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", MARKER.sub("", text))


class CitationGuard:
    """Every `[n]` names a given passage (others were removed); a factual answer cites at least one."""

    name = "citations"

    def scan(self, context: OutputContext) -> Verdict:
        if context.invalid:
            return Verdict(
                self.name,
                Action.MASK,
                score=float(len(context.invalid)),
                reason=f"removed markers naming no given passage: {sorted(set(context.invalid))}",
            )
        if not context.refused and not context.cited:
            return Verdict(self.name, Action.FLAG, score=0.0, reason="the answer cites no passage")
        return Verdict(self.name, Action.ALLOW, score=float(len(context.cited)))


class LeakGuard:
    """Blocks the system prompt and text of documents the user may not read; masks personal data that neither
    the question nor the given passages contained."""

    name = "leaks"

    def scan(self, context: OutputContext) -> Verdict:
        answer_shingles = shingles(context.answer)
        prompt_overlap = len(answer_shingles & shingles(context.system_prompt))
        if prompt_overlap >= 2:
            return Verdict(
                self.name, Action.BLOCK, score=float(prompt_overlap), reason="the answer repeats the system prompt"
            )
        unreadable = _unreadable_overlap(context, answer_shingles)
        if unreadable:
            return Verdict(
                self.name,
                Action.BLOCK,
                score=float(unreadable["shared"]),
                reason="the answer contains text of a document you may not read",
                # Not which document: the verdict is stored with the exchange and shown to the asker, who may
                # not learn that it exists.
                details={"shared_runs": unreadable["shared"]},
            )
        allowed = " ".join(source.text for source in context.sources.values())
        masked = pii.mask(context.answer, keep=lambda finding: finding.value in allowed)
        if masked.placeholders:
            context.answer = masked.text
            return Verdict(
                self.name,
                Action.MASK,
                score=float(len(masked.placeholders)),
                reason="masked personal data that the documents given did not contain",
                details={"kinds": masked.kinds},
            )
        return Verdict(self.name, Action.ALLOW, score=0.0)


def _unreadable_overlap(context: OutputContext, answer_shingles: set) -> dict | None:
    if context.unreadable_search is None or not answer_shingles:
        return None
    for _document_id, text in context.unreadable_search(context.answer):
        shared = len(answer_shingles & shingles(text))
        if shared >= 2:
            return {"shared": shared}
    return None


class GroundingGuard:
    """Scores each sentence against the passages it cites: 0.5 x embedding similarity + 0.5 x the share of its
    keywords found in the passage. A sentence below KB_GROUNDING_MIN_SCORE, or a claim citing nothing (or only
    passages flagged as instructions to a model), loses its markers and is marked [unsupported], so that it is
    never shown as sourced."""

    name = "grounding"

    def scan(self, context: OutputContext) -> Verdict:
        if context.refused or not context.answer.strip():
            return Verdict(self.name, Action.ALLOW)
        sentences = answer_sentences(context.answer)
        claims = [(i, s) for i, s in enumerate(sentences) if _is_claim(s)]
        if not claims:
            return Verdict(self.name, Action.ALLOW)
        scores = _support_scores([s for _, s in claims], context.sources, context.vectors)
        threshold = settings.KB_GROUNDING_MIN_SCORE
        unsupported = 0
        rewritten = list(sentences)
        for (index, sentence), (score, cited) in zip(claims, scores, strict=True):
            supported = bool(cited) and score >= threshold
            context.grounding.append(
                {
                    "sentence": MARKER.sub("", sentence).strip(),
                    "cited": cited,
                    "score": round(score, 3),
                    "supported": supported,
                }
            )
            if not supported:
                unsupported += 1
                body = without_markers(sentence).rstrip()
                rewritten[index] = f"{body} {UNSUPPORTED}"
        if not unsupported:
            minimum = min(item["score"] for item in context.grounding)
            return Verdict(self.name, Action.ALLOW, score=minimum)
        context.answer = "".join(rewritten)
        return Verdict(
            self.name,
            Action.FLAG,
            score=min(item["score"] for item in context.grounding),
            reason=f"{unsupported} of {len(claims)} sentences not supported by what they cite",
            details={"unsupported": unsupported},
        )


def answer_sentences(answer: str) -> list[str]:
    """The answer cut into sentences that keep their own text and spacing (joined they give the answer back);
    a marker run just after a full stop ("fact. [1]") belongs to the sentence before it."""
    pieces: list[str] = []
    cursor = 0
    for _start, end in split_sentences(answer):
        # Keep everything up to this sentence's end in the previous piece, so nothing is lost.
        if pieces:
            leading = re.match(r"\s*(?:\[\d{1,4}\]\s*)+", answer[cursor:end])
            if leading and leading.end() >= end - cursor:
                pieces[-1] += answer[cursor:end]  # nothing but markers: they close the sentence before
                cursor = end
                continue
            if leading:
                pieces[-1] += answer[cursor : cursor + leading.end()]
                cursor += leading.end()
        pieces.append(answer[cursor:end])
        cursor = end
    if cursor < len(answer):
        if pieces:
            pieces[-1] += answer[cursor:]
        else:
            pieces.append(answer[cursor:])
    return _tables_whole(pieces)


_TABLE_LINE = re.compile(r"^[\s>]*\|")
_MARKERS_ONLY = re.compile(r"^[\s>]*(?:\[\d{1,4}\][\s>]*)*$")  # also a bare ">" line closing a quoted table


def _tables_whole(pieces: list[str]) -> list[str]:
    """A markdown table (its lines, quoted or not, and the markers just after it) is one claim: its rows are
    read under their header and cite what the table cites, rather than each line citing nothing."""
    merged: list[str] = []
    in_table = False
    for piece in pieces:
        is_row = bool(_TABLE_LINE.match(piece.strip("\n")))
        if merged and in_table and (is_row or _MARKERS_ONLY.match(piece)):
            merged[-1] += piece
            in_table = is_row or in_table
            continue
        merged.append(piece)
        in_table = is_row
    return merged


def _is_claim(sentence: str) -> bool:
    text = MARKER.sub("", sentence).strip().strip("*_>").strip()
    if not text or EXTRACTIVE_LABEL in sentence or text.endswith(":"):
        return False
    return len(_WORD.findall(text)) >= MIN_CLAIM_WORDS


_TABLE_SEPARATOR = re.compile(r"^[\s>]*\|(?:\s*:?-{3,}:?\s*\|)+\s*$")


def claim_text(sentence: str) -> str:
    """What a claim states: for a quoted table, its rows below the header. The header names the columns of every
    row; counting its words as evidence would let any row under a real header look supported."""
    lines = sentence.splitlines()
    for i, line in enumerate(lines):
        if _TABLE_SEPARATOR.match(line) and lines[i + 1 :]:
            return "\n".join(lines[i + 1 :])
    return sentence


def claim_key(sentence: str) -> str:
    """The text of an answer sentence as it is embedded (no markers; a table's rows below its header)."""
    return claim_text(MARKER.sub("", sentence)).strip()


def _support_scores(
    sentences: list[str], sources: dict[int, Source], store: dict[str, np.ndarray] | None = None
) -> list[tuple[float, list[int]]]:
    from kb.search import embeddings

    # An untrusted passage supports nothing: a sentence that only it "supports" is unsupported.
    cited_per_sentence = [
        [int(n) for n in MARKER.findall(s) if int(n) in sources and not sources[int(n)].untrusted] for s in sentences
    ]
    needed = sorted({n for cited in cited_per_sentence for n in cited})
    if not needed:
        return [(0.0, []) for _ in sentences]
    texts = [claim_key(s) for s in sentences]
    # A passage's vector is stored with its chunk (of its text with title and section) and given with it;
    # passages without one are embedded here.
    missing = [n for n in needed if sources[n].vector is None]
    vectors = embeddings.embed(texts + [sources[n].text for n in missing])
    sentence_vectors = vectors[: len(texts)]
    if store is not None:  # later guards (off-limits topics) reuse them
        store.update(zip(texts, sentence_vectors, strict=True))
    passage_vectors = {n: np.asarray(sources[n].vector, dtype=np.float32) for n in needed if n not in missing}
    passage_vectors.update(zip(missing, vectors[len(texts) :], strict=True))
    results = []
    for text, vector, cited in zip(texts, sentence_vectors, cited_per_sentence, strict=True):
        words = keywords(text)
        best = 0.0
        for n in cited:
            similarity = float(np.dot(vector, passage_vectors[n]))
            overlap = len(words & keywords(sources[n].text)) / len(words) if words else 0.0
            best = max(best, 0.5 * similarity + 0.5 * overlap)
        results.append((best, cited))
    return results


BLOCKED_OUTPUT = "This answer was withheld: {reason}. The question is recorded; try asking it another way."


TOXIC_REMOVED = "[removed: offensive language]"


class ToxicityOutputGuard:
    """A sentence of the answer that reads as abusive (insults, slurs, hate; the model's own words or a quoted
    passage's) is replaced by [removed: offensive language], its markers with it, and a notice says so. Only
    sentences with a word of the trained gate list or a rule hit are embedded and scored (threshold
    KB_ANSWER_TOXICITY_THRESHOLD, kb/guard/toxicity.py), so an ordinary answer costs a word lookup."""

    name = "toxicity"

    def scan(self, context: OutputContext) -> Verdict:
        from kb.guard.toxicity import candidate_sentence, is_toxic, toxicity_scores

        if not context.answer.strip():
            return Verdict(self.name, Action.ALLOW)
        sentences = answer_sentences(context.answer)
        suspects = [(i, without_markers(s).strip()) for i, s in enumerate(sentences) if candidate_sentence(s)]
        if not suspects:
            return Verdict(self.name, Action.ALLOW, score=0.0)
        # The grounding guard's embeddings of these sentences when it ran first (nothing embedded twice).
        known = [
            context.vectors[key] for key in (claim_key(sentences[i]) for i, _ in suspects) if key in context.vectors
        ]
        given = np.stack(known) if len(known) == len(suspects) else None
        scores = toxicity_scores([text for _, text in suspects], given)
        threshold = settings.KB_ANSWER_TOXICITY_THRESHOLD
        removed = [i for (i, _), s in zip(suspects, scores, strict=True) if is_toxic(s, threshold)]
        top = max(s.score for s in scores)
        if not removed:
            return Verdict(self.name, Action.ALLOW, score=top, details={"threshold": threshold})
        rewritten = list(sentences)
        for i in removed:
            trailing = sentences[i][len(sentences[i].rstrip()) :]
            rewritten[i] = TOXIC_REMOVED + trailing
            if i and not rewritten[i - 1][-1:].isspace():
                rewritten[i] = " " + rewritten[i]
        context.answer = "".join(rewritten)
        return Verdict(
            self.name,
            Action.MASK,
            score=top,
            reason=f"removed {len(removed)} sentence(s) of offensive language",
            details={
                "threshold": threshold,
                "removed": len(removed),
                "notice": f"{len(removed)} sentence(s) of this answer were removed as offensive language.",
            },
        )
