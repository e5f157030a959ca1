"""Staged rollout of answer configurations through the real ask pipeline, the fake Anthropic server
(tests/fake_anthropic.grounded_responder: it follows its prompt's citation rules) and the real shadow evaluation.

- A candidate prompt whose answers cite nothing (answer-worse-fixture), at 10 %, is rolled back automatically once
  both sides have the minimum sample; its askers return to the current configuration; the audit holds it all.
- A good candidate is promoted to everyone by the admin (the Operations page).
- The shadow evaluation refuses to start the worse prompt.
"""

from __future__ import annotations

import pytest

from kb.accounts.roles import Role
from kb.answers import services as answers
from kb.answers.models import Exchange
from kb.audit.models import AuditEvent
from kb.ops import config, services, shadow
from kb.ops.models import Rollout, RolloutState
from tests.conftest import FALLBACK, PRIMARY
from tests.factories import UserFactory
from tests.fake_anthropic import grounded_responder

pytestmark = pytest.mark.django_db

WORSE = "answer-worse-fixture"
QUESTIONS = [
    "What is the hotel limit per night in Amsterdam?",
    "How long must passwords be?",
    "When do employees travel by train instead of flying?",
    "Who approves flights?",
    "Where should hotels be booked?",
    "What is the hotel limit per night in Rotterdam?",
    "When do I connect to the VPN?",
    "Is a password manager installed on company laptops?",
]


@pytest.fixture
def model(fake_anthropic, rollout_settings, corpus):
    fake_anthropic.default = grounded_responder
    rollout_settings.KB_MODELS = [PRIMARY, "extractive"]
    return fake_anthropic


def askers(rollout_id: int, count: int = 40) -> tuple[list, list]:
    """Employees on the candidate's side of a rollout and on the current configuration's."""
    users = [UserFactory(roles=[Role.EMPLOYEE]) for _ in range(count)]
    share = Rollout.objects.get(pk=rollout_id).share
    return ([u for u in users if config.bucket(u.pk, rollout_id) < share],
            [u for u in users if config.bucket(u.pk, rollout_id) >= share])  # fmt: skip


@pytest.fixture
def ask(django_capture_on_commit_callbacks):
    """Ask as the product does; what runs after the exchange's commit (the rollout check) runs too (a test's
    transaction never commits)."""

    def asking(question: str, user) -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            return answers.ask(question, user)

    return asking


def ask_round(ask, users: list, n: int) -> list[dict]:
    return [ask(QUESTIONS[(n + i) % len(QUESTIONS)], user) for i, user in enumerate(users)]


def test_a_candidate_whose_answers_cite_nothing_is_rolled_back_at_10_percent(model, knowledge_admin, settings, ask):
    settings.KB_ROLLOUT_EVAL_METRICS = ["hit_at_k", "must_include_recall"]  # a golden set blind to citations
    candidate = services.configuration_create(name="worse prompt", prompt_version=WORSE,
                                              models=[PRIMARY, "extractive"], actor=knowledge_admin)  # fmt: skip
    rollout = services.rollout_create(candidate=candidate, actor=knowledge_admin)
    baseline = rollout.baseline
    assert baseline.from_environment and baseline.prompt_version == settings.KB_PROMPT_VERSION
    rollout = shadow.rollout_evaluate(rollout_id=rollout.pk)
    assert rollout.evaluation_passed, rollout.evaluation
    services.rollout_start(rollout=rollout, share=10, actor=knowledge_admin)
    on_candidate, on_current = askers(rollout.pk)
    assert on_candidate and len(on_current) > len(on_candidate)

    asked = 0
    while Rollout.objects.get(pk=rollout.pk).state == RolloutState.ROLLING:
        assert asked < 12, "not rolled back after 12 rounds"
        for result in ask_round(ask, on_current[:6], asked):
            assert Exchange.objects.get(pk=result["exchange_id"]).configuration_id == baseline.pk
        for user in on_candidate:
            result = ask(QUESTIONS[asked % len(QUESTIONS)], user)
            if result["configuration"]["arm"] == "candidate":
                assert not result["citations"]  # the worse prompt cites nothing
        asked += 1

    rollout.refresh_from_db()
    candidate_exchanges = Exchange.objects.filter(configuration=candidate)
    # Not after one bad answer: only once both sides have the minimum sample.
    assert candidate_exchanges.count() >= settings.KB_ROLLOUT_MIN_SAMPLE
    assert "unsupported_rate" in rollout.reason and rollout.reason.startswith("automatic")
    figures = rollout.figures
    assert figures["candidate"]["unsupported_rate"] > 0.9 and figures["baseline"]["unsupported_rate"] < 0.3
    assert any(f["metric"] == "unsupported_rate" and f["worse"] and f["p_value"] < 0.01 for f in figures["findings"])

    # Its askers are back on the current configuration, at once.
    for user in on_candidate:
        result = ask(QUESTIONS[0], user)
        assert result["configuration"]["id"] == baseline.pk and (result["citations"] or result["refused"])
    assert candidate_exchanges.count() == figures["candidate"]["questions"]

    # The audit holds the rollout, its evaluation, the figures and the rollback; each exchange its configuration.
    actions = [e.data["action"] for e in AuditEvent.objects.filter(kind="rollout").order_by("seq")]
    assert actions == ["created", "evaluated", "started", "rolled_back"]
    rolled = AuditEvent.objects.get(kind="rollout", data__action="rolled_back")
    assert rolled.actor_id is None and rolled.data["reason"] == rollout.reason
    assert rolled.data["figures"]["candidate"]["unsupported_rate"] == figures["candidate"]["unsupported_rate"]
    last = candidate_exchanges.order_by("-pk").first()
    assert AuditEvent.objects.get(kind="exchange", exchange_id=last.pk).data["configuration_id"] == candidate.pk


def test_a_good_candidate_is_promoted_to_everyone_by_the_admin(model, knowledge_admin, client, ask):
    candidate = services.configuration_create(name="haiku first", prompt_version="answer-v2",
                                              models=[FALLBACK, "extractive"], actor=knowledge_admin)  # fmt: skip
    client.force_login(knowledge_admin)
    response = client.post("/ops/rollouts", {"candidate": candidate.pk})  # queues the evaluation (broker)
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    assert client.post(f"/ops/rollouts/{rollout.pk}", {"action": "start", "share": "10"}).status_code == 302
    assert Rollout.objects.get().state == RolloutState.EVALUATING  # refused: no passing evaluation yet
    evaluated = shadow.rollout_evaluate(rollout_id=rollout.pk)
    assert evaluated.evaluation_passed, evaluated.evaluation
    client.post(f"/ops/rollouts/{rollout.pk}", {"action": "start", "share": "10"})
    assert Rollout.objects.get().state == RolloutState.ROLLING
    on_candidate, on_current = askers(rollout.pk)
    assert on_candidate, "no asker on the candidate's side"
    for n in range(3):
        for result in ask_round(ask, on_candidate + on_current[:5], n):
            assert result["citations"] or result["refused"], result  # cited, or "not covered"
    assert {e.model for e in Exchange.objects.filter(configuration=candidate)} == {FALLBACK}
    page = client.get("/ops/").content.decode()
    assert "haiku first" in page and "10 %" in page and "ops-figures" in page

    client.post(f"/ops/rollouts/{rollout.pk}", {"action": "promote"})
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PROMOTED and rollout.share == 100
    for result in ask_round(ask, on_current[:5], 0):
        assert result["model"] == FALLBACK and result["configuration"]["id"] == candidate.pk
    assert [e.data["action"] for e in AuditEvent.objects.filter(kind="rollout").order_by("seq")] == [
        "created",
        "evaluated",
        "started",
        "promoted",
    ]


def test_the_shadow_evaluation_refuses_to_start_a_prompt_below_the_current_floors(model, knowledge_admin):
    candidate = services.configuration_create(name="worse", prompt_version=WORSE, models=[PRIMARY, "extractive"])
    rollout = shadow.rollout_evaluate(rollout_id=services.rollout_create(candidate=candidate).pk)
    assert rollout.state == RolloutState.REJECTED and rollout.evaluation_passed is False
    assert "cited_answer_rate" in rollout.reason
    with pytest.raises(services.OpsError, match=r"rejected|cannot be started"):
        services.rollout_start(rollout=rollout, share=5)
    assert not Exchange.objects.filter(configuration=candidate).exists()


def test_configurations_are_checked_and_never_changed(knowledge_admin, settings):
    with pytest.raises(services.OpsError, match=r"not a prompt id|no prompt"):
        services.configuration_create(name="x", prompt_version="answer-v99", models=["extractive"])
    with pytest.raises(services.OpsError, match="unknown link"):
        services.configuration_create(name="x", prompt_version="answer-v2", models=["nonsense"])
    made = services.configuration_create(name="x", prompt_version="answer-v2", models=[])
    assert made.chain == ["extractive"]
    with pytest.raises(services.OpsError, match="exists already"):
        services.configuration_create(name="x", prompt_version="answer-v2", models=["extractive"])


def test_the_bucket_is_sticky_and_raising_the_share_keeps_the_candidates_askers():
    users = range(1, 2001)
    at_10 = {u for u in users if config.bucket(u, 7) < 10}
    at_25 = {u for u in users if config.bucket(u, 7) < 25}
    assert at_10 < at_25 and 150 < len(at_10) < 250 and 420 < len(at_25) < 580
    assert {u for u in users if config.bucket(u, 8) < 10} != at_10  # a new rollout draws anew
