"""Stage 9, record: the pending exchange is opened before anything slow; `finish` writes the exchange and
exactly one audit event whatever happened, stores a plain answer in the cache, and a second finish of the same
exchange writes nothing more."""

from __future__ import annotations

import dataclasses

import pytest

from kb.answers.models import Conversation, Exchange, Outcome
from kb.answers.pipeline.record import CACHEABLE, finish, open_exchange
from kb.answers.pipeline.types import AskRequest, Ending
from kb.audit.models import AuditEvent
from kb.llm.models import CachedAnswer
from kb.llm.providers import EXTRACTIVE, Usage
from tests.answers.pipeline.conftest import HOTEL, guarded_of, scope_for, stage_inputs

ANSWER = "The hotel limit is 180 euros per night in Amsterdam [1]."


def answered(inputs, **changes) -> Ending:
    ending = Ending(
        outcome=Outcome.ANSWERED, answer=ANSWER, citations=[{"n": 1, "document_id": 1}], model=EXTRACTIVE,
        attempts=[{"link": EXTRACTIVE, "outcome": "ok"}], usage=Usage(input_tokens=10, output_tokens=5),
        cost_usd=0.25,
    )  # fmt: skip
    return dataclasses.replace(ending, **changes)


def audited(exchange_id: int) -> int:
    return AuditEvent.objects.filter(kind="exchange", exchange_id=exchange_id).count()


def test_open_exchange_writes_a_pending_exchange_in_a_new_conversation(db, employee, trace):
    trace.verdicts.append({"guard": "pii", "action": "allow"})
    scoped = scope_for(employee)
    opened = open_exchange(
        AskRequest(user=employee, question=HOTEL, request_id="r-1"), scoped, guarded_of(HOTEL), trace
    )
    exchange = Exchange.objects.get(pk=opened.exchange_id)
    assert exchange.outcome == Outcome.PENDING and exchange.user == employee and exchange.question == HOTEL
    assert exchange.chain == [EXTRACTIVE] and exchange.prompt_version == scoped.prompt.version
    assert exchange.request_id == "r-1" and exchange.guard_verdicts == trace.verdicts
    assert exchange.conversation_id == opened.conversation_id
    assert Conversation.objects.get(pk=opened.conversation_id).title == HOTEL
    assert opened.history == () and opened.use_cache and opened.topic == ""
    assert audited(opened.exchange_id) == 0, "the audit event is written when the exchange finishes"


def test_a_follow_up_opens_in_its_conversation_with_the_answered_turns(corpus, employee):
    first = stage_inputs(employee)
    finish(first.begun, answered(first))
    refused = stage_inputs(
        employee, "Who won the football world cup in 1954?", conversation_id=first.opened.conversation_id
    )
    finish(refused.begun, refused.next.ending)
    follow = stage_inputs(employee, "And in Rotterdam?", conversation_id=first.opened.conversation_id)
    assert follow.opened.conversation_id == first.opened.conversation_id and not follow.opened.use_cache
    (turn,) = follow.opened.history  # the refused exchange is not a turn to build on
    assert (turn.question, turn.answer, turn.search_query) == (HOTEL, ANSWER, first.evidence.retrieved.result.query)
    assert follow.opened.topic == first.evidence.retrieved.result.query  # what its first answered question searched
    finish(follow.begun, answered(follow))
    later = stage_inputs(employee, "And trains?", conversation_id=first.opened.conversation_id)
    assert len(later.opened.history) == 2 and later.opened.topic == follow.opened.topic  # the first, not the latest


def test_someone_elses_conversation_cannot_be_opened(corpus, employee, hr_employee):
    first = stage_inputs(employee)
    with pytest.raises(Conversation.DoesNotExist):
        stage_inputs(hr_employee, "And in Rotterdam?", conversation_id=first.opened.conversation_id)


def test_finish_writes_the_exchange_and_exactly_one_audit_event(corpus, employee):
    inputs = stage_inputs(employee)
    inputs.trace.notices.append("a notice")
    inputs.trace.latency["retrieval_ms"] = 3.0
    result = finish(inputs.begun, answered(inputs))
    exchange = Exchange.objects.get(pk=inputs.opened.exchange_id)
    assert exchange.outcome == Outcome.ANSWERED and exchange.answer == ANSWER and exchange.model == EXTRACTIVE
    assert exchange.finished_at is not None and exchange.notices == ["a notice"]
    assert exchange.latency["retrieval_ms"] == 3.0 and exchange.latency["total_ms"] == exchange.latency_ms
    assert exchange.usage == {**Usage(10, 5).as_dict(), "cost_usd": 0.25} and float(exchange.cost_usd) == 0.25
    retrieved = inputs.evidence.retrieved
    assert exchange.search_query == retrieved.result.query and exchange.evidence_score == inputs.evidence.evidence_score
    assert [p["chunk_id"] for p in exchange.passages] == [hit.chunk_id for hit in retrieved.result.hits]
    assert exchange.passages[0]["document_version"] == corpus.travel.version
    assert audited(exchange.pk) == 1
    event = AuditEvent.objects.get(kind="exchange", exchange_id=exchange.pk)
    assert event.data["question"] == HOTEL and event.data["model"] == EXTRACTIVE
    assert result["exchange_id"] == exchange.pk and result["outcome"] == "answered" and result["answer"] == ANSWER
    assert result["usage"]["cost_usd"] == 0.25 and result["latency_ms"] == exchange.latency_ms


def test_a_second_finish_of_the_same_exchange_writes_nothing_more(corpus, employee):
    inputs = stage_inputs(employee)
    finish(inputs.begun, answered(inputs))
    before = (AuditEvent.objects.count(), CachedAnswer.objects.count())
    again = finish(inputs.begun, Ending(outcome=Outcome.FAILED, answer="late", error="retried"))
    exchange = Exchange.objects.get(pk=inputs.opened.exchange_id)
    assert exchange.outcome == Outcome.ANSWERED and exchange.answer == ANSWER and exchange.error == ""
    assert (AuditEvent.objects.count(), CachedAnswer.objects.count()) == before
    assert again["exchange_id"] == exchange.pk


def test_an_early_stop_is_recorded_with_what_was_retrieved(corpus, employee):
    inputs = stage_inputs(employee, "Who won the football world cup in 1954?")
    finish(inputs.begun, inputs.next.ending)
    exchange = Exchange.objects.get(pk=inputs.opened.exchange_id)
    assert exchange.outcome == Outcome.REFUSED and exchange.refusal_reason == "weak_evidence"
    assert exchange.passages and exchange.evidence_score == inputs.next.evidence_score
    assert audited(exchange.pk) == 1 and not CachedAnswer.objects.exists()


def test_a_plain_answer_is_stored_in_the_scopes_cache(corpus, employee):
    inputs = stage_inputs(employee)
    result = finish(inputs.begun, answered(inputs))
    entry = CachedAnswer.objects.get()
    assert entry.namespace == inputs.scope.namespace and entry.index_version == inputs.scope.index_version
    assert entry.source_exchange_id == inputs.opened.exchange_id
    assert entry.result == {key: result[key] for key in CACHEABLE}


@pytest.mark.parametrize(
    "changes",
    [
        {"fallback_used": True},
        {"refused": True, "refusal_reason": "not_covered_by_model"},
        {"outcome": Outcome.BLOCKED},
        {"outcome": Outcome.CACHED, "cached": True},
    ],
)
def test_a_fallback_refused_blocked_or_cached_answer_is_not_stored(corpus, employee, changes):
    inputs = stage_inputs(employee)
    finish(inputs.begun, answered(inputs, **changes))
    assert not CachedAnswer.objects.exists() and audited(inputs.opened.exchange_id) == 1


def test_a_follow_ups_answer_is_not_stored(corpus, employee):
    first = stage_inputs(employee)
    finish(first.begun, answered(first))
    follow = stage_inputs(employee, "And in Rotterdam?", conversation_id=first.opened.conversation_id)
    finish(follow.begun, answered(follow, answer="The limit is 150 euros [1]."))
    assert CachedAnswer.objects.count() == 1 and audited(follow.opened.exchange_id) == 1


def test_the_record_marks_the_passages_the_legs_placed_and_the_conversations(db, settings):
    """With 10 passages and 2 from the legs, the 9th and 10th were placed by the legs (`leg_passages`); a
    follow-up's conversation passages come after them and are marked as such."""
    import numpy as np

    from kb.answers.pipeline.record import _passages_record
    from kb.answers.pipeline.types import Query, Retrieved
    from kb.search.retrieval import SearchHit, SearchResult

    settings.KB_ANSWER_PASSAGES = 10
    settings.KB_ANSWER_LEG_PASSAGES = 2

    def hit(i: int) -> SearchHit:
        return SearchHit(i, 1, "T", [], None, None, "text", 0.01, vector_rank=i)

    result = SearchResult(query="q", mode="hybrid", hits=[hit(i) for i in range(1, 11)])
    retrieved = Retrieved(Query("q", np.zeros(384)), result, conversation=(hit(11),))
    record = _passages_record(retrieved)
    assert [bool(p.get("leg_best")) for p in record] == [False] * 8 + [True, True, False]
    assert [bool(p.get("conversation")) for p in record] == [False] * 10 + [True]

    settings.KB_ANSWER_PASSAGES = 8  # none from the legs: they never reach the extractive answer's 8
    result = SearchResult(query="q", mode="hybrid", hits=[hit(i) for i in range(1, 9)])
    assert not any(p.get("leg_best") for p in _passages_record(Retrieved(Query("q", np.zeros(384)), result)))
