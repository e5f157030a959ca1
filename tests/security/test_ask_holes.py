"""Holes an outside security test found in the ask path (issue 17, items 2-5): one user's parallel asks, the
semantic cache naming another person's question, a broken character giving a 500 with no record, and
personal data in feedback comments reaching the audit export."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from kb.accounts.services import api_token_create
from kb.answers import services
from kb.answers.models import Exchange, Outcome
from kb.answers.pipeline.cache import known_answer
from kb.answers.pipeline.types import Guarded, Opened, Scope, Stop, Trace
from kb.audit.models import AuditEvent
from kb.llm import cache, prompts
from kb.search.retrieval import ReadScope

HOTEL = "What is the hotel limit per night in Amsterdam?"


def test_questions_that_passed_the_first_check_are_held_to_the_rate_limit_when_recorded(employee, settings):
    """The tester's 30 asks, 15 at a time, got 26 answers under a limit of 20: every ask had passed the check
    before any was recorded. The limit is checked again as each exchange is opened."""
    settings.KB_MODELS = ["extractive"]
    settings.KB_RATE_LIMIT_PER_MINUTE = 2
    questions = [HOTEL, "Which approval do flights need?", "When is first class allowed?", "Who books trains?"]
    checked = [services.ask_check(employee, question, None) for question in questions]  # all pass: none recorded
    outcomes = []
    for question in checked:
        try:
            outcomes.append(async_to_sync(services.ask_collect)(question, employee)["outcome"])
        except services.AskError as error:
            outcomes.append(error.status)
    assert outcomes[2:] == [429, 429] and 429 not in outcomes[:2]
    assert Exchange.objects.filter(user=employee).count() == 2


def test_a_user_with_questions_in_flight_is_told_to_wait_and_nobody_else_is(employee, settings):
    from tests.factories import UserFactory

    settings.KB_USER_ASKS_IN_FLIGHT = 2
    for question in ("one", "two"):
        Exchange.objects.create(user=employee, question=question)  # pending: being answered
    with pytest.raises(services.AskError) as error:
        services.ask_check(employee, HOTEL, None)
    assert error.value.status == 429 and "being answered" in str(error.value) and error.value.retry_after_s
    other = UserFactory(roles=["Employee"])
    assert services.ask_check(other, HOTEL, None) == HOTEL


@pytest.mark.django_db(transaction=True)
def test_parallel_asks_of_one_user_are_capped_atomically(employee, settings):
    """Eight asks of one user at once, all past the first check: at most the in-flight cap and the rate limit
    are recorded; the rest are refused with a 429, never a pool time-out."""
    settings.KB_MODELS = ["extractive"]
    settings.KB_RATE_LIMIT_PER_MINUTE = 3
    settings.KB_USER_ASKS_IN_FLIGHT = 3
    start = threading.Barrier(8)
    results: list = []

    def ask(number: int) -> None:
        try:
            question = services.ask_check(employee, f"How many days of leave do I get, question {number}?", None)
            start.wait(timeout=30)
            results.append(async_to_sync(services.ask_collect)(question, employee)["outcome"])
        except services.AskError as error:
            results.append(error.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 8
    recorded = Exchange.objects.filter(user=employee)
    assert recorded.count() == len([r for r in results if r != 429]) <= 3
    assert results.count(429) >= 5 and all(r in (429, Outcome.REFUSED, Outcome.ANSWERED) for r in results)


def test_a_semantic_cache_hit_never_shows_the_earlier_question(employee, settings):
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 0.9
    prompt = prompts.get(settings.KB_PROMPT_VERSION)
    namespace = cache.namespace(scope_key="groups:", index_version=1, prompt_version=prompt.version, chain=["x"])
    vector = np.ones(settings.KB_EMBEDDING_DIMENSIONS, dtype=np.float32)
    vector /= np.linalg.norm(vector)
    earlier = "Maria Schmidt in accounts is pregnant: how long is her maternity leave?"
    cache.store(namespace, question=earlier, vector=vector, index_version=1, result={"answer": "x"}, exchange_id=None)
    scope = Scope(ReadScope(group_ids=()), 1, prompt, ("x",), namespace)
    trace = Trace(started=0.0)
    asked = Guarded(question="How long is maternity leave for someone in accounts?", placeholders={}, vector=vector)
    stop = known_answer(scope, asked, Opened(exchange_id=1, conversation_id=1, history=()), trace)
    assert isinstance(stop, Stop) and stop.ending.cached and trace.cache["kind"] == "semantic"
    shown = " ".join(trace.notices) + json.dumps(trace.cache)
    assert "Maria" not in shown and "pregnant" not in shown and "earlier question" in shown


def test_a_lone_surrogate_is_a_clear_400_and_on_record(client, employee):
    question = "What is the leave \ud800 policy?"
    with pytest.raises(services.AskError) as error:
        services.ask(question, employee)
    assert error.value.status == 400 and "broken character" in str(error.value)
    _, token = api_token_create(user=employee)
    response = client.post(
        "/api/v1/ask", '{"question": "What is the leave \\ud800 policy?"}', content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert response.status_code == 400 and "broken character" in response.json()["detail"]
    refused = Exchange.objects.filter(user=employee, refusal_reason="invalid_text")
    assert refused.count() == 2 and all(e.outcome == Outcome.BLOCKED and e.finished_at for e in refused)
    assert refused.first().question == "What is the leave \ufffd policy?"
    logged = AuditEvent.objects.filter(kind="exchange")
    assert {event.data["exchange_id"] for event in logged} == set(refused.values_list("pk", flat=True))


def test_feedback_comments_are_masked_before_they_are_stored_or_audited(employee, settings):
    settings.KB_MODELS = ["extractive"]
    exchange = Exchange.objects.create(user=employee, question=HOTEL, outcome=Outcome.ANSWERED)
    services.feedback_give(
        exchange=exchange, user=employee, rating="down", reason="wrong",
        comment="It told me to log in with password: Hunter2Secret! and mail jane.roe@example.com",
    )  # fmt: skip
    stored = exchange.feedback.comment
    assert "Hunter2Secret" not in stored and "jane.roe@example.com" not in stored and "[EMAIL_1]" in stored
    (event,) = AuditEvent.objects.filter(kind="feedback")
    assert "Hunter2Secret" not in json.dumps(event.data) and "jane.roe" not in json.dumps(event.data)
