"""Stage 4, retrieve: hybrid search of the query within the asker's read scope, timed in the trace."""

from __future__ import annotations

from kb.answers.pipeline.retrieve import leg_passages, retrieve
from kb.answers.pipeline.types import Query
from kb.llm import extractive
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


def test_a_follow_up_ends_with_its_conversations_best_passages_that_its_query_missed(corpus, employee, trace, settings):
    """A follow-up about trains after a question about passwords: the query's own passages come first and
    whole, then the best ones for the conversation's first question that the query did not find."""
    settings.KB_ANSWER_PASSAGES = 2
    settings.KB_CONVERSATION_PASSAGES = 1
    query = query_of("Is first class allowed on trains?")
    alone = retrieve(scope_for(employee), query, trace)
    assert alone.conversation == () and alone.hits == alone.result.hits
    follow_up = Query(query.text, query.vector, topic="Who may I share my password with?")
    retrieved = retrieve(scope_for(employee), follow_up, trace)
    assert [hit.chunk_id for hit in retrieved.result.hits] == [hit.chunk_id for hit in alone.result.hits]
    (extra,) = retrieved.conversation
    assert extra.document_id == corpus.security.pk and "never shared" in extra.text
    assert extra.chunk_id not in {hit.chunk_id for hit in retrieved.result.hits}
    assert retrieved.hits == [*retrieved.result.hits, extra]
    settings.KB_CONVERSATION_PASSAGES = 0
    assert retrieve(scope_for(employee), follow_up, trace).conversation == ()


def test_the_conversations_passages_keep_to_the_read_scope(corpus, employee, trace, settings):
    settings.KB_ANSWER_PASSAGES = 1
    settings.KB_CONVERSATION_PASSAGES = 3
    query = query_of(HOTEL)
    follow_up = Query(query.text, query.vector, topic=LEAVE_QUESTION)
    retrieved = retrieve(scope_for(employee), follow_up, trace)
    assert retrieved.conversation and corpus.leave.pk not in {hit.document_id for hit in retrieved.hits}


def test_the_last_passages_are_each_legs_best_not_among_fusions_first(corpus, employee, trace, settings, monkeypatch):
    """The words of this question are in one travel passage (BM25's first, the vector leg's second) and its
    meaning is nearest the hotel passage, which the keyword leg does not find: fusion puts the first one first."""
    settings.KB_ANSWER_PASSAGES = 1
    settings.KB_ANSWER_LEG_PASSAGES = 1
    query = query_of("overnight stay expense ceiling class")
    # The extractive answer's first passages stay fusion's: with 1 passage none is a leg's.
    assert extractive.PASSAGES == 8 and leg_passages() == 0
    (fused,) = retrieve(scope_for(employee), query, trace).result.hits
    assert fused.bm25_rank == 1 and fused.vector_rank == 2
    monkeypatch.setattr(extractive, "PASSAGES", 0)  # as if the extractive answer read none of them
    assert leg_passages() == 1
    (nearest,) = retrieve(scope_for(employee), query, trace).result.hits
    assert nearest.vector_rank == 1 and nearest.bm25_rank is None and "180 euros" in nearest.text


def test_leg_passages_come_after_the_extractive_answers_passages(settings):
    settings.KB_ANSWER_LEG_PASSAGES = 2
    for passages, legs in ((12, 2), (10, 2), (9, 1), (8, 0), (3, 0)):
        settings.KB_ANSWER_PASSAGES = passages
        assert leg_passages() == legs
    settings.KB_ANSWER_PASSAGES = 12
    settings.KB_ANSWER_LEG_PASSAGES = 0
    assert leg_passages() == 0
