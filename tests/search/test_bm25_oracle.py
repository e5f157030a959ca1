"""The database's BM25 equals rank-bm25's on a corpus built through the real ingestion pipeline."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from rank_bm25 import BM25Okapi

from kb.search.analyzer import analyze
from kb.search.models import IndexState
from kb.search.retrieval import ReadScope, bm25_leg
from tests.search.conftest import WORDS

pytestmark = pytest.mark.django_db
TOP = 10
QUERIES = 25


class LuceneIdfBM25(BM25Okapi):
    """rank-bm25's Okapi BM25 with the idf the database uses: Lucene's ln(1 + (N - df + 0.5) / (df + 0.5)),
    which is never negative, in place of rank-bm25's floored ln((N - df + 0.5) / (df + 0.5))."""

    def _calc_idf(self, nd):
        for word, df in nd.items():
            self.idf[word] = math.log(1 + (self.corpus_size - df + 0.5) / (df + 0.5))


def _indexed_corpus() -> tuple[list[int], list[list[str]]]:
    """Every chunk's terms, read back from the postings (a chunk with no terms is an empty document)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM ingest_chunk ORDER BY id")
        chunk_ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT p.chunk_id, t.text, p.tf FROM search_posting p JOIN search_term t ON t.id = p.term_id "
            "ORDER BY p.chunk_id, t.text"
        )
        tokens: dict[int, list[str]] = {chunk_id: [] for chunk_id in chunk_ids}
        for chunk_id, text, tf in cursor.fetchall():
            tokens[chunk_id].extend([text] * tf)
    return chunk_ids, [tokens[chunk_id] for chunk_id in chunk_ids]


def _queries() -> list[str]:
    rng = random.Random(7)
    queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(QUERIES)]
    # Inflected forms (one stem), a repeated word, and stop words around a keyword.
    return [*queries, "reconciling reconciled reconciliation", "ledger ledger audit", "the invoice of the supplier"]


def test_top_10_and_scores_equal_rank_bm25_with_the_same_idf(search_corpus):
    chunk_ids, documents = _indexed_corpus()
    assert len(chunk_ids) >= 300
    state = IndexState.objects.get()
    assert state.chunk_count == len(chunk_ids)
    assert state.total_length == sum(map(len, documents))
    oracle = LuceneIdfBM25(documents, k1=settings.KB_BM25_K1, b=settings.KB_BM25_B)
    compared = 0
    for query in _queries():
        terms = analyze([query])[0]
        expected_scores = oracle.get_scores(list(terms.elements()))
        got = bm25_leg(terms, ReadScope.all_documents(), TOP)
        order = np.argsort(-expected_scores, kind="stable")
        expected = [(chunk_ids[i], expected_scores[i]) for i in order[:TOP] if expected_scores[i] > 0]
        assert [hit.value for hit in got] == pytest.approx([score for _, score in expected], rel=1e-9), query
        by_chunk = dict(zip(chunk_ids, expected_scores, strict=True))
        for hit in got:
            assert hit.value == pytest.approx(by_chunk[hit.chunk_id], rel=1e-9), query
        # The same chunks, except that chunks tied on score may trade places at the cut.
        cut = expected[-1][1] if expected else 0
        assert {c for c, s in expected if s > cut * (1 + 1e-9)} <= {hit.chunk_id for hit in got}, query
        compared += len(got)
    assert compared > QUERIES * TOP // 2


def test_a_query_term_counts_as_often_as_it_is_repeated(search_corpus):
    once = bm25_leg(Counter({"ledger": 1}), ReadScope.all_documents(), 3)
    twice = bm25_leg(Counter({"ledger": 2}), ReadScope.all_documents(), 3)
    assert [hit.chunk_id for hit in once] == [hit.chunk_id for hit in twice]
    assert [2 * hit.value for hit in once] == pytest.approx([hit.value for hit in twice])


def test_terms_missing_from_the_index_score_nothing(search_corpus):
    assert bm25_leg(Counter({"xylophonequartz": 1}), ReadScope.all_documents(), 5) == []
