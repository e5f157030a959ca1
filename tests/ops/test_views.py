"""The Operations page's actions: each refusal says what happened and what to do; only Knowledge admins act."""

from __future__ import annotations

import pytest

from kb.ops import services
from kb.ops.models import AnswerConfiguration, Rollout, RolloutState

pytestmark = pytest.mark.django_db


def messages_of(response) -> str:
    return " ".join(str(message) for message in response.context["messages"])


@pytest.fixture
def rollout(settings):
    settings.KB_MODELS = ["extractive"]
    candidate = services.configuration_create(name="v1", prompt_version="answer-v1", models=["extractive"])
    return services.rollout_create(candidate=candidate)


def test_a_refused_action_says_why_and_what_to_do(client, knowledge_admin, rollout):
    client.force_login(knowledge_admin)
    post = lambda data: client.post(f"/ops/rollouts/{rollout.pk}", data, follow=True)  # noqa: E731
    assert "no passing shadow evaluation yet: run" in messages_of(post({"action": "start", "share": "5"}))
    services.rollout_evaluation_record(rollout=rollout, evaluation={"failures": []}, passed=True)
    assert "whole percentage from 1 to 100" in messages_of(post({"action": "start", "share": "150"}))
    assert "Choose a share" in messages_of(post({"action": "start", "share": "lots"}))
    assert "Unknown action" in messages_of(post({"action": "explode"}))
    assert "only a rolling one is promoted" in messages_of(post({"action": "promote"}))
    assert "answers 5 % of askers" in messages_of(post({"action": "start", "share": "5"}))
    again = client.post("/ops/rollouts", {"candidate": rollout.candidate_id}, follow=True)
    assert "Another rollout is open" in messages_of(again)
    same = services.configuration_create(name="same as now", prompt_version="answer-v2", models=["extractive"])
    services.rollout_rollback(rollout=rollout, reason="")
    assert "answers exactly as the current configuration" in messages_of(
        client.post("/ops/rollouts", {"candidate": same.pk}, follow=True)
    )
    assert Rollout.objects.get().reason == "rolled back by hand"


def test_a_new_configuration_from_the_form_is_checked(client, knowledge_admin, settings):
    settings.KB_MODELS = ["extractive"]
    client.force_login(knowledge_admin)
    bad = client.post("/ops/configurations", {"name": "x", "prompt_version": "answer-v2", "chain": "anthropic:m"},
                      follow=True)  # fmt: skip
    assert "ANTHROPIC_API_KEY is not set" in messages_of(bad)
    good = client.post("/ops/configurations", {"name": "x", "prompt_version": "answer-v1", "chain": "extractive",
                                               "routes": "fast=extractive"}, follow=True)  # fmt: skip
    assert "Configuration x stored" in messages_of(good)
    made = AnswerConfiguration.objects.get(name="x")
    assert made.routes == {"fast": ["extractive"]} and made.created_by == knowledge_admin


def test_the_page_says_when_the_environment_no_longer_answers(client, knowledge_admin, rollout, settings):
    client.force_login(knowledge_admin)
    assert "ops-environment-differs" not in client.get("/ops/").content.decode()
    settings.KB_PROMPT_VERSION = "answer-v1"
    page = client.get("/ops/").content.decode()
    assert "ops-environment-differs" in page and "answer until it is stored as a configuration" in " ".join(
        page.split()
    )


def test_others_cannot_act(client, employee, compliance, rollout):
    for user in (employee, compliance):
        client.force_login(user)
        assert client.post(f"/ops/rollouts/{rollout.pk}", {"action": "rollback"}).status_code == 403
    assert Rollout.objects.get().state == RolloutState.EVALUATING
