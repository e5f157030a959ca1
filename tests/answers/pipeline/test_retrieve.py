"""Stage 4, retrieve: hybrid search of the query within the asker's read scope, timed in the trace."""

from __future__ import annotations

from kb.answers.pipeline.retrieve import retrieve
from tests.answers.pipeline.conftest import HOTEL, query_of, scope_for

LEAVE_QUESTION = "How many weeks of paid parental leave does a parent receive?"


def test_the_query_finds_its_passage_first_and_the_search_is_timed(corpus, employee, trace):
    query = query_of(HOTEL)
    retrieved = retrieve(scope_for(employee), query, trace)
    assert retrieved.query is query
    first = retrieved.result.hits[0]
    assert first.document_id == corpus.travel.pk and "180 euros" in first.text
    assert first.vector_similarity is not None and first.bm25_rank is not None
    assert "retrieval_ms" in trace.latency


def test_documents_outside_the_read_scope_are_never_returned(corpus, employee, hr_employee, trace):
    outsider = retrieve(scope_for(employee), query_of(LEAVE_QUESTION), trace)
    assert corpus.leave.pk not in {hit.document_id for hit in outsider.result.hits}
    insider = retrieve(scope_for(hr_employee), query_of(LEAVE_QUESTION), trace)
    assert insider.result.hits[0].document_id == corpus.leave.pk


def test_at_most_the_configured_number_of_passages_is_retrieved(corpus, employee, trace, settings):
    settings.KB_ANSWER_PASSAGES = 2
    assert len(retrieve(scope_for(employee), query_of("company policy"), trace).result.hits) == 2
