"""The evidence gate: is the retrieved support strong enough to ask a model at all?

Score = the best cosine similarity between the question and a passage + the best keyword coverage (the
idf-weighted share of the question's keywords that a passage contains), in 0..2. Measured on SQuAD 2.0 and
SciFact with out-of-domain questions as the ones to refuse (tests/bench/test_gate_calibration.py, README
"Evidence gate"): similarity alone needs a threshold per corpus (0.32 on SQuAD, 0.48 on SciFact for the
same share of wrongly refused questions); the sum holds one threshold across both.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.db import connection

from kb.search.models import IndexState
from kb.search.retrieval import SearchResult

_COVERAGE_SQL = """
SELECT t.text, t.df,
       array(SELECT p.chunk_id FROM search_posting p WHERE p.term_id = t.id AND p.chunk_id = ANY(%(chunks)s))
FROM search_term t
WHERE t.text = ANY(%(terms)s::text[])
"""


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
