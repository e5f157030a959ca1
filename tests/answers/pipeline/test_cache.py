"""Stage 3, known answers: exact and semantic cache hits end the exchange as cached, with the cache's record in
the trace; a miss gives the query to search; a follow-up skips the caches and is rewritten as a standalone
query."""

from __future__ import annotations

import dataclasses

import numpy as np

from kb.answers.models import Outcome
from kb.answers.pipeline.cache import known_answer
from kb.answers.pipeline.types import Query, Stop, Turn
from kb.llm import cache
from kb.llm.models import CachedAnswer
from kb.search import embeddings
from kb.text import normalise
from tests.answers.pipeline.conftest import HOTEL, guarded_of, opened_with, scope_for

RESULT = {
    "answer": "The limit is 180 euros per night [1].",
    "citations": [{"n": 1, "document_id": 1, "passage": 3}],
    "refused": False,
    "refusal_reason": "",
    "model": "anthropic:claude-sonnet-5-5",
    "fallback_used": False,
}


def vector(text: str) -> np.ndarray:
    return embeddings.embed([normalise(text)])[0]


def cached(scope, question: str = HOTEL, result: dict = RESULT) -> int:
    cache.store(
        scope.namespace, question=question, vector=vector(question), index_version=scope.index_version,
        result=result, exchange_id=None,
    )  # fmt: skip
    return CachedAnswer.objects.get(question=normalise(question)).pk


def test_an_exact_hit_is_a_cached_stop_with_the_caches_record(db, employee, trace):
    scoped = scope_for(employee)
    entry = cached(scoped)
    stop = known_answer(scoped, guarded_of("  what is the HOTEL limit per night in Amsterdam "), opened_with(), trace)
    assert isinstance(stop, Stop)
    ending = stop.ending
    assert ending.outcome == Outcome.CACHED and ending.cached and ending.answer == RESULT["answer"]
    assert ending.citations == RESULT["citations"] and ending.model == RESULT["model"]
    assert trace.cache == {"kind": "exact", "similarity": 1.0, "entry": entry}
    assert "cache_ms" in trace.latency and "embed_ms" not in trace.latency, "an exact hit embeds nothing"
    assert trace.notices == []


def test_an_entry_stored_with_the_models_numbers_is_shown_numbered_from_one(db, employee, trace):
    scoped = scope_for(employee)
    earlier = {**RESULT, "answer": "Hotels [3]; trains [6].", "citations": [{"n": 3}, {"n": 6}]}
    cached(scoped, result=earlier)
    stop = known_answer(scoped, guarded_of(HOTEL), opened_with(), trace)
    assert isinstance(stop, Stop) and stop.ending.answer == "Hotels [1]; trains [2]."
    assert stop.ending.citations == [{"n": 1, "passage": 3}, {"n": 2, "passage": 6}]


def test_a_semantic_hit_says_so_without_showing_the_earlier_question(db, employee, trace, settings):
    scoped = scope_for(employee)
    entry = cached(scoped)
    paraphrase = "What's the hotel limit per night for Amsterdam?"
    stop = known_answer(scoped, guarded_of(paraphrase, vector(paraphrase)), opened_with(), trace)
    assert isinstance(stop, Stop) and stop.ending.outcome == Outcome.CACHED
    assert trace.cache["kind"] == "semantic" and trace.cache["entry"] == entry
    assert settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY <= trace.cache["similarity"] < 1
    (notice,) = trace.notices
    # The earlier question may be another person's: it is never shown (issue 17, hole 3).
    assert "earlier question" in notice and normalise(HOTEL) not in notice.casefold()


def test_a_miss_gives_the_normalised_query_with_the_guards_embedding(db, employee, trace):
    scoped = scope_for(employee)
    cached(scoped, "How long must a password be?")
    question = "  What is the HOTEL limit per night in Rotterdam?  "
    computed = vector(question)
    query = known_answer(scoped, guarded_of(question, computed), opened_with(), trace)
    assert isinstance(query, Query)
    assert query.text == "what is the hotel limit per night in rotterdam" and query.vector is computed
    assert trace.cache["kind"] == "miss" and 0 < trace.cache["nearest_similarity"] < 1
    assert {"cache_ms", "embed_ms"} <= set(trace.latency)


def test_without_the_guards_embedding_the_query_is_embedded_here(db, employee, trace):
    query = known_answer(scope_for(employee), guarded_of(HOTEL), opened_with(), trace)
    assert isinstance(query, Query) and trace.cache == {"kind": "miss"}, "an empty cache has no nearest question"
    np.testing.assert_allclose(query.vector, vector(HOTEL), atol=1e-5)


def test_another_namespaces_answer_is_never_served(db, employee, hr_employee, corpus, trace):
    cached(scope_for(hr_employee))
    query = known_answer(scope_for(employee), guarded_of(HOTEL, vector(HOTEL)), opened_with(), trace)
    assert isinstance(query, Query) and trace.cache["kind"] == "miss"


def test_a_follow_up_skips_the_caches_and_searches_a_standalone_query(db, employee, trace):
    scoped = scope_for(employee)
    follow_up = "And in Rotterdam?"
    cached(scoped, follow_up)  # would be an exact hit for a standalone question
    guarded = guarded_of(follow_up, vector(follow_up))
    earlier = Turn(question=HOTEL, answer="The limit is 180 euros per night [1].", search_query=HOTEL)
    query = known_answer(scoped, guarded, opened_with(earlier), trace)
    assert isinstance(query, Query) and query.text == "What is the hotel limit per night in Rotterdam?"
    np.testing.assert_allclose(query.vector, embeddings.embed([query.text])[0], atol=1e-5)
    assert trace.cache == {"kind": "skipped"} and "cache_ms" not in trace.latency
    assert CachedAnswer.objects.get().hits == 0
    opened = dataclasses.replace(opened_with(earlier), topic="Who may I share my password with?")
    assert known_answer(scoped, guarded, opened, trace).topic == "Who may I share my password with?"


def test_a_follow_up_that_asks_its_conversations_first_question_again_has_no_other_topic(db, employee, trace):
    earlier = Turn(question=HOTEL, answer="The limit is 180 euros per night [1].", search_query=HOTEL)
    opened = dataclasses.replace(opened_with(earlier), topic="what is the hotel limit per night in amsterdam")
    again = known_answer(scope_for(employee), guarded_of(HOTEL, vector(HOTEL)), opened, trace)
    assert isinstance(again, Query) and again.topic == ""
    standalone = known_answer(scope_for(employee), guarded_of(HOTEL, vector(HOTEL)), opened_with(), trace)
    assert isinstance(standalone, Query) and standalone.topic == ""
