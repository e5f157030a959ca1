"""Stage 5, evidence: is there anything to answer from? The gate scores the retrieved support (best passage
similarity + best idf-weighted keyword coverage, 0..2; its threshold chosen on the golden dev sets by
`manage.py calibrate_answers`, the README's "Evidence gate"); below KB_EVIDENCE_MIN_SCORE the question is refused
as not covered, with the nearest documents. Above it, the passages are numbered and the model request is built
from them."""

from __future__ import annotations

import dataclasses
import math

from django.conf import settings
from django.db import connection

from ingest.models import Chunk
from kb.answers.citations import Source
from kb.answers.models import Outcome
from kb.answers.pipeline.types import Ending, Evidence, Guarded, Opened, Retrieved, Scope, Stop
from kb.llm.extractive import NOT_COVERED
from kb.llm.prompts import quoted, render_history, render_passages
from kb.llm.providers import ModelRequest, Passage
from kb.search.models import IndexState
from kb.search.retrieval import SearchResult

NEAREST_DOCUMENTS = 3

_COVERAGE_SQL = """
SELECT t.text, t.df,
       array(SELECT p.chunk_id FROM search_posting p WHERE p.term_id = t.id AND p.chunk_id = ANY(%(chunks)s))
FROM search_term t
WHERE t.text = ANY(%(terms)s::text[])
"""


def says_not_covered(answer: str) -> bool:
    """The prompt's fixed reply when the passages do not answer the question."""
    return " ".join(answer.split()).casefold().startswith(NOT_COVERED.casefold().rstrip("."))


def idf(df: int, n: int) -> float:
    """BM25's idf as the keyword leg computes it (Lucene's, never negative)."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def keyword_coverages(result: SearchResult, chunk_count: int | None = None) -> list[float]:
    """For each hit, the idf-weighted share of the query's keywords that occur in its chunk."""
    if not result.terms or not result.hits:
        return [0.0] * len(result.hits)
    if chunk_count is None:
        state = IndexState.objects.filter(pk=1).only("chunk_count").first()
        chunk_count = state.chunk_count if state else 0
    with connection.cursor() as cursor:
        cursor.execute(_COVERAGE_SQL, {"terms": result.terms, "chunks": [hit.chunk_id for hit in result.hits]})
        known = {text: (df, set(chunk_ids)) for text, df, chunk_ids in cursor.fetchall()}
    weights = {term: idf(known[term][0] if term in known else 0, chunk_count) for term in result.terms}
    total = sum(weights.values())
    return [
        sum(weight for term, weight in weights.items() if term in known and hit.chunk_id in known[term][1]) / total
        for hit in result.hits
    ]


def evidence_score(result: SearchResult) -> float | None:
    """Best passage similarity plus best keyword coverage (0..2); None when nothing was retrieved."""
    similarities = [hit.vector_similarity for hit in result.hits if hit.vector_similarity is not None]
    if not similarities:
        return None
    return max(similarities) + max(keyword_coverages(result), default=0.0)


def is_covered(score: float | None) -> bool:
    return score is not None and score >= settings.KB_EVIDENCE_MIN_SCORE


def nearest_documents(result: SearchResult | None) -> list[dict]:
    seen: dict[int, dict] = {}
    for hit in result.hits if result else []:
        if hit.document_id not in seen:
            seen[hit.document_id] = {"document_id": hit.document_id, "title": hit.title}
        if len(seen) >= NEAREST_DOCUMENTS:
            break
    return list(seen.values())


def _not_covered(retrieved: Retrieved, score: float | None) -> Stop:
    # Refused on the follow-up's own passages: the conversation's were given to no one and are not recorded.
    if retrieved.conversation:
        retrieved = dataclasses.replace(retrieved, conversation=())
    found = bool(retrieved.result.hits)
    return Stop(
        Ending(
            outcome=Outcome.REFUSED,
            answer=NOT_COVERED
            + (
                " The closest documents are listed below; try other words or ask the knowledge team."
                if found
                else " No document you can read matches it."
            ),
            refused=True,
            refusal_reason="weak_evidence" if found else "no_passages",
            nearest=nearest_documents(retrieved.result),
        ),
        retrieved=retrieved,
        evidence_score=score,
    )


def evidence(scope: Scope, guarded: Guarded, opened: Opened, retrieved: Retrieved) -> Stop | Evidence:
    score = evidence_score(retrieved.result)
    if not is_covered(score):
        return _not_covered(retrieved, score)
    hits = retrieved.hits
    sources = {
        n: Source(n, hit.chunk_id, hit.document_id, hit.title, hit.heading, hit.pages, hit.text)
        for n, hit in enumerate(hits, 1)
    }
    untrusted = set(
        Chunk.objects.filter(pk__in=[hit.chunk_id for hit in hits], untrusted=True).values_list("pk", flat=True)
    )
    passages = [
        Passage(
            n=s.n,
            title=s.title,
            heading=s.heading,
            page=s.page,
            text=s.text,
            untrusted=s.chunk_id in untrusted,
        )
        for s in sources.values()
    ]
    prompt = scope.prompt
    model_request = ModelRequest(
        system=prompt.system,
        user=prompt.user_message(
            passages=render_passages(passages),
            question=quoted(guarded.question),
            history=render_history([(turn.question, turn.answer) for turn in opened.history]),
        ),
        # The extractive answer scores sentences against this: a follow-up ("and in Truro?") as the standalone
        # query it was searched with.
        question=retrieved.query.text if opened.history else guarded.question,
        passages=passages,
        max_tokens=settings.KB_LLM_MAX_TOKENS,
    )
    return Evidence(retrieved, score, sources, model_request)
