"""The evidence gate: is the retrieved support strong enough to ask a model at all?"""

from __future__ import annotations

from django.conf import settings

from kb.search.retrieval import SearchResult


def evidence_score(result: SearchResult) -> float | None:
    """The best cosine similarity between the question and a retrieved passage (None with no passages).

    Chosen by measurement (tests/bench/test_gate_calibration.py): see KB_EVIDENCE_MIN_SIMILARITY.
    """
    similarities = [hit.vector_similarity for hit in result.hits if hit.vector_similarity is not None]
    return max(similarities) if similarities else None


def is_covered(score: float | None) -> bool:
    return score is not None and score >= settings.KB_EVIDENCE_MIN_SIMILARITY
