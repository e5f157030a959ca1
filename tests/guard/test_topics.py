"""Off-limits topics: the matcher, the shipped thresholds on the held-out half, the services, the ask path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from kb.answers import services as answer_services
from kb.answers.models import Exchange, Outcome
from kb.audit.models import AuditEvent
from kb.guard import services
from kb.guard.base import Action
from kb.guard.input import InputContext
from kb.guard.models import Topic, TopicResponse
from kb.guard.output import OutputContext
from kb.guard.topics import OFF_LIMITS, TopicGuard, TopicMatcher, TopicOutputGuard, TopicSpec, train_weights
from kb.search.embeddings import embed
from kb.text import normalise
from tests.fake_anthropic import Reply

QUESTIONS = Path(settings.BASE_DIR) / "tests" / "data" / "topics" / "questions.jsonl"
PAY = "Another employee's pay or performance"


@pytest.fixture(autouse=True)
def _no_topics_left_behind():
    """Each process caches the active topics for KB_TOPIC_REFRESH_S: none may outlive the test's database."""
    from kb.guard.services import forget_matcher

    forget_matcher()
    yield
    forget_matcher()


@pytest.fixture
def defaults(db):
    return services.topics_load_defaults()


def _matcher_from_defaults() -> TopicMatcher:
    data = json.loads(services.DEFAULT_TOPICS.read_text())["topics"]
    vectors = lambda texts: embed([normalise(t) for t in texts])  # noqa: E731
    background = vectors([q for q in services.BACKGROUND.read_text().splitlines() if q.strip()])
    trained = train_weights(
        [vectors(t["examples"]) for t in data], vectors([n for t in data for n in t["negatives"]]), background
    )
    return TopicMatcher(
        [TopicSpec(i, t["name"], t["response"], t["message"], t["contact"], w, b) for i, (t, (w, b)) in
         enumerate(zip(data, trained, strict=True))]
    )  # fmt: skip


def test_the_shipped_threshold_holds_on_the_test_half_it_was_not_chosen_on():
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) >= 80 and {r["label"] for r in test} == {"on_topic", "near_miss"}
    matches = _matcher_from_defaults().match_many(embed([normalise(r["question"]) for r in test]))
    threshold = settings.KB_TOPIC_THRESHOLD
    flagged = [m.off_limits(threshold) for m in matches]
    right = [
        f and r["label"] == "on_topic" and m.topic.name == r["topic"]
        for f, m, r in zip(flagged, matches, test, strict=True)
    ]
    precision = sum(right) / sum(flagged)
    recall = sum(right) / sum(r["label"] == "on_topic" for r in test)
    assert precision >= 0.9 and recall >= 0.85, (precision, recall)


def test_the_pay_review_timetable_is_not_another_employees_pay():
    matcher = _matcher_from_defaults()
    timetable, colleague = matcher.match_many(
        embed(["where is the pay review timetable?", "how much does my colleague Ben in finance earn?"])
    )
    assert not timetable.off_limits(settings.KB_TOPIC_THRESHOLD)
    assert colleague.off_limits(settings.KB_TOPIC_THRESHOLD) and colleague.topic.name == PAY


def test_training_matches_a_logistic_regression_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    own, rest = rng.normal(0.3, 1, (20, 8)), rng.normal(-0.3, 1, (60, 8))
    ((weight, bias),) = train_weights([own], rest, np.zeros((0, 8)), c=10.0)
    x = np.concatenate([own, rest])
    y = np.r_[np.ones(20), np.zeros(60)]
    reference = LogisticRegression(C=10.0, class_weight="balanced", tol=1e-10, max_iter=10000).fit(x, y)
    assert np.allclose(weight, reference.coef_[0], atol=1e-3) and abs(bias - reference.intercept_[0]) < 1e-3


def test_no_topics_allow_everything():
    context = InputContext(user=None, text="how much does my colleague earn?", topics=TopicMatcher(()))
    assert TopicGuard().scan(context).action == Action.ALLOW


def test_saving_a_topic_trains_it_audits_it_and_every_process_sees_the_change(defaults, knowledge_admin):
    assert len(defaults) == 4 and all(t.weight for t in Topic.objects.all())
    matcher = services.active_matcher()
    assert len(matcher.topics) == 4
    question = embed([normalise("should I buy ethereum with my bonus?")])[0]
    assert matcher.match(question).off_limits(settings.KB_TOPIC_THRESHOLD)
    investment = Topic.objects.get(name="Investment advice")
    services.topic_update(topic=investment, active=False, actor=knowledge_admin)
    assert len(services.active_matcher().topics) == 3  # the cache key (id, updated_at) moved
    assert not services.active_matcher().match(question).off_limits(settings.KB_TOPIC_THRESHOLD) or (
        services.active_matcher().match(question).topic.name != "Investment advice"
    )
    event = AuditEvent.objects.filter(kind="topic_change").order_by("-seq").first()
    assert event.data["action"] == "updated" and event.data["name"] == "Investment advice"
    assert event.actor_username == knowledge_admin.username and event.data["active"] is False


def test_a_topic_needs_examples_and_whom_to_ask(db):
    with pytest.raises(services.TopicError, match="at least 5"):
        services.topic_create(name="Tax", examples="how do I do my taxes?", response="refuse", message="No.")
    with pytest.raises(services.TopicError, match="whom to ask"):
        services.topic_create(
            name="Tax", examples="\n".join(f"tax question {i}" for i in range(6)),
            response=TopicResponse.HAND_TO_PERSON, message="Not here.", contact="",
        )  # fmt: skip
    assert not Topic.objects.exists()


def test_an_off_limits_question_gets_the_topics_message_is_recorded_and_no_model_is_called(
    fake_anthropic, corpus, employee, defaults
):
    result = answer_services.ask("my coworker Daan got a bigger raise than me, how much is he paid now?", employee)
    assert result["outcome"] == "blocked" and result["refused"] and result["refusal_reason"] == OFF_LIMITS
    pay = Topic.objects.get(name=PAY)
    assert result["answer"] == f"{pay.message} Please ask {pay.contact}."
    assert fake_anthropic.requests == []
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    assert exchange.outcome == Outcome.BLOCKED and exchange.refusal_reason == OFF_LIMITS
    verdict = next(v for v in exchange.guard_verdicts if v["guard"] == "topics")
    assert verdict["action"] == "block" and verdict["details"]["topic"] == PAY
    event = AuditEvent.objects.filter(kind="exchange", exchange_id=exchange.pk).get()
    assert event.data["refusal_reason"] == OFF_LIMITS


def test_an_ordinary_question_is_answered_with_the_topics_loaded(fake_anthropic, corpus, employee, defaults):
    result = answer_services.ask("What is the hotel limit per night in Amsterdam?", employee)
    assert result["outcome"] != "blocked" and fake_anthropic.requests
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    assert any(v["guard"] == "topics" and v["action"] == "allow" for v in exchange.guard_verdicts)


def test_an_answer_that_strays_into_a_topic_is_withheld(fake_anthropic, corpus, employee, defaults):
    fake_anthropic.then(
        Reply(text="The hotel limit is 150 euros [1]. Anna got a 12% raise, more than anyone else in your team.")
    )
    result = answer_services.ask("What is the hotel limit per night in Amsterdam?", employee)
    assert result["outcome"] == "blocked" and result["refusal_reason"] == OFF_LIMITS
    assert result["answer"].startswith("This answer was withheld") and "12%" not in result["answer"]
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    assert "12%" not in exchange.answer
    assert any(v["guard"] == "topics" and v["action"] == "block" for v in exchange.guard_verdicts)


def test_the_output_guard_reuses_the_grounding_vectors(defaults):
    sentence = "The hotel limit in Amsterdam is 150 euros per night."
    context = OutputContext(
        answer=sentence, question="q", sources={}, system_prompt="", cited=[], invalid=[], refused=False, model="m",
        topics=services.active_matcher(), vectors={sentence: np.zeros(384, dtype=np.float32)},
    )  # fmt: skip
    verdict = TopicOutputGuard().scan(context)
    assert verdict.action == Action.ALLOW and set(context.vectors) == {sentence}  # nothing else was embedded
