"""Stage 5, evidence: the gate refuses what the documents clearly do not cover (with the nearest documents);
otherwise the passages are numbered, flagged when untrusted, and the model
request is built from them."""

from __future__ import annotations

from ingest.models import Chunk
from kb.answers.models import Outcome
from kb.answers.pipeline.evidence import NOT_COVERED, evidence
from kb.answers.pipeline.retrieve import retrieve
from kb.answers.pipeline.types import Evidence, Query, Stop, Turn
from kb.search.retrieval import ReadScope
from tests.answers.pipeline.conftest import HOTEL, guarded_of, opened_with, query_of, scope_for


def gate(user, question: str, trace, *, opened=None, read=None):
    scoped = scope_for(user, read=read)
    retrieved = retrieve(scoped, query_of(question), trace)
    return retrieved, evidence(scoped, guarded_of(question), opened or opened_with(), retrieved)


def test_an_unrelated_question_is_refused_as_weak_evidence_with_the_nearest_documents(corpus, employee, trace):
    retrieved, stop = gate(employee, "Who won the football world cup in 1954?", trace)
    assert isinstance(stop, Stop) and stop.retrieved is retrieved
    ending = stop.ending
    assert ending.outcome == Outcome.REFUSED and ending.refused and ending.refusal_reason == "weak_evidence"
    assert ending.answer.startswith(NOT_COVERED) and "closest documents" in ending.answer
    readable = {corpus.travel.pk: "Travel policy", corpus.security.pk: "Security handbook"}
    assert ending.nearest and {d["document_id"]: d["title"] for d in ending.nearest}.items() <= readable.items()
    assert stop.evidence_score is not None and stop.evidence_score < 0.85


def test_with_no_readable_passage_the_refusal_says_so(corpus, employee, trace):
    _, stop = gate(employee, HOTEL, trace, read=ReadScope(nothing=True))
    assert isinstance(stop, Stop) and stop.ending.refusal_reason == "no_passages"
    assert "No document you can read" in stop.ending.answer and stop.ending.nearest == []
    assert stop.evidence_score is None


def test_an_answerable_question_gets_numbered_sources_and_a_model_request(corpus, employee, trace, settings):
    retrieved, found = gate(employee, HOTEL, trace)
    assert isinstance(found, Evidence) and found.retrieved is retrieved
    assert found.evidence_score >= settings.KB_EVIDENCE_MIN_SCORE
    hits = retrieved.result.hits
    assert list(found.sources) == list(range(1, len(hits) + 1))
    assert [s.chunk_id for s in found.sources.values()] == [hit.chunk_id for hit in hits]
    assert found.sources[1].document_id == corpus.travel.pk and "180 euros" in found.sources[1].text
    request = found.model_request
    assert [p.n for p in request.passages] == list(found.sources) and request.question == HOTEL
    assert '<passage n="1" document="Travel policy"' in request.user and HOTEL in request.user
    assert request.system == scope_for(employee).prompt.system
    assert request.max_tokens == settings.KB_LLM_MAX_TOKENS
    assert not any(p.untrusted for p in request.passages) and 'untrusted="true"' not in request.user


def test_the_gate_threshold_decides(corpus, employee, trace, settings):
    _, found = gate(employee, HOTEL, trace)
    settings.KB_EVIDENCE_MIN_SCORE = found.evidence_score + 0.001
    _, stop = gate(employee, HOTEL, trace)
    assert isinstance(stop, Stop) and stop.ending.refusal_reason == "weak_evidence"
    settings.KB_EVIDENCE_MIN_SCORE = found.evidence_score
    assert isinstance(gate(employee, HOTEL, trace)[1], Evidence)


def test_untrusted_passages_are_flagged_in_the_request(corpus, employee, trace):
    Chunk.objects.filter(document=corpus.travel).update(untrusted=True)
    _, found = gate(employee, HOTEL, trace)
    flags = {p.n: p.untrusted for p in found.model_request.passages}
    travel = {n for n, s in found.sources.items() if s.document_id == corpus.travel.pk}
    assert travel and flags == {n: n in travel for n in found.sources}
    assert found.model_request.user.count('untrusted="true"') == len(travel)


def test_a_follow_ups_conversation_goes_into_the_request(corpus, employee, trace):
    earlier = Turn(question=HOTEL, answer="The limit is 180 euros per night [1].", search_query=HOTEL)
    _, found = gate(employee, "What is the hotel limit per night in Rotterdam?", trace, opened=opened_with(earlier))
    assert "<conversation_so_far>" in found.model_request.user and HOTEL in found.model_request.user
    _, alone = gate(employee, "What is the hotel limit per night in Rotterdam?", trace)
    assert "<conversation_so_far>" not in alone.model_request.user


def test_a_follow_up_is_given_to_the_extractive_answer_as_the_standalone_query_it_was_searched_with(
    corpus, employee, trace
):
    from kb.answers.followup import standalone_query
    from kb.answers.pipeline.evidence import evidence as evidence_stage

    earlier = Turn(question=HOTEL, answer="The limit is 180 euros per night [1].", search_query=HOTEL)
    standalone = standalone_query("and in Rotterdam?", HOTEL)
    scoped = scope_for(employee)
    retrieved = retrieve(scoped, query_of(standalone), trace)
    found = evidence_stage(scoped, guarded_of("and in Rotterdam?"), opened_with(earlier), retrieved)
    assert isinstance(found, Evidence)
    assert found.model_request.question == retrieved.query.text and "rotterdam" in found.model_request.question.lower()
    assert "hotel" in found.model_request.question.lower()
    assert "and in Rotterdam?" in found.model_request.user  # the model still reads the question as asked


def test_a_follow_ups_conversation_passages_follow_its_own_and_a_gate_refusal_drops_them(
    corpus, employee, trace, settings
):
    settings.KB_ANSWER_PASSAGES = 1
    earlier = Turn(question=HOTEL, answer="The limit is 180 euros per night [1].", search_query=HOTEL)
    scoped = scope_for(employee)
    own = query_of("Do passwords have a minimum length?")
    retrieved = retrieve(scoped, Query(own.text, own.vector, topic=HOTEL), trace)
    assert retrieved.conversation, "the hotel question's passages, which the password search did not find"
    found = evidence(scoped, guarded_of(own.text), opened_with(earlier), retrieved)
    assert isinstance(found, Evidence)
    assert [s.chunk_id for s in found.sources.values()] == [hit.chunk_id for hit in retrieved.hits]
    assert found.model_request.user.count("<passage ") == 1 + len(retrieved.conversation)
    settings.KB_EVIDENCE_MIN_SCORE = 2.0  # nothing clears it
    stop = evidence(scoped, guarded_of(own.text), opened_with(earlier), retrieved)
    assert isinstance(stop, Stop) and stop.retrieved.conversation == ()
    assert stop.retrieved.result is retrieved.result, "the refusal keeps (and records) the follow-up's own"
