"""Stage 1, scope: read scope, index and prompt versions, the chain the budget allows, the caches' namespace."""

from __future__ import annotations

import pytest
from django.db.models import F

from kb.answers.models import Conversation, Exchange
from kb.answers.pipeline.scope import scope
from kb.answers.pipeline.types import AskRequest
from kb.guard.models import Topic
from kb.guard.services import topics_key
from kb.llm import cache
from kb.llm.providers import EXTRACTIVE
from kb.search.models import IndexState
from kb.search.retrieval import ReadScope
from tests.answers.pipeline.conftest import FALLBACK, HOTEL, PRIMARY
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def models(settings):
    settings.KB_MODELS = [PRIMARY, FALLBACK, EXTRACTIVE]
    settings.KB_USER_DAILY_BUDGET_USD = 1.0
    settings.KB_DAILY_BUDGET_USD = 0.0  # the company's spending is cached per process; these tests use the user's
    settings.KB_BUDGET_DOWNGRADE_FRACTION = 0.8


def spent(user, usd: float) -> None:
    conversation = Conversation.objects.create(user=user, title="earlier")
    Exchange.objects.create(user=user, conversation=conversation, question="earlier", cost_usd=usd)


def test_scope_holds_the_read_scope_versions_whole_chain_and_their_namespace(corpus, employee, trace, settings):
    scoped = scope(AskRequest(user=employee, question=HOTEL), trace)
    index_version = IndexState.objects.get(pk=1).version
    assert scoped.read == ReadScope.for_user(employee) and index_version > 0
    assert scoped.index_version == index_version
    assert scoped.prompt.version.startswith(f"{settings.KB_PROMPT_VERSION}@")
    assert scoped.chain == (PRIMARY, FALLBACK, EXTRACTIVE) and trace.notices == []
    assert scoped.namespace == cache.namespace(
        scope_key=scoped.read.key, index_version=index_version, prompt_version=scoped.prompt.version,
        chain=[PRIMARY, FALLBACK, EXTRACTIVE], topics=topics_key(),
    )  # fmt: skip


def test_a_budget_at_its_limit_gives_the_extractive_chain_and_a_notice(db, employee, trace):
    full = scope(AskRequest(user=employee, question=HOTEL), trace)
    spent(employee, 1.0)
    scoped = scope(AskRequest(user=employee, question=HOTEL), trace)
    assert scoped.chain == (EXTRACTIVE,)
    (notice,) = trace.notices
    assert "budget" in notice and "used up" in notice and "$1.00" in notice
    assert scoped.namespace != full.namespace, "answers of another chain are never served from the cache"


def test_near_the_budget_the_cheapest_remote_link_answers(db, employee, trace):
    spent(employee, 0.85)
    scoped = scope(AskRequest(user=employee, question=HOTEL), trace)
    assert scoped.chain == (FALLBACK, EXTRACTIVE)  # haiku is cheaper than sonnet
    assert len(trace.notices) == 1 and "smaller model" in trace.notices[0]


def test_another_users_spending_does_not_count_against_the_askers_budget(db, employee, trace):
    spent(UserFactory(), 5.0)
    assert scope(AskRequest(user=employee, question=HOTEL), trace).chain == (PRIMARY, FALLBACK, EXTRACTIVE)
    assert trace.notices == []


def test_the_namespace_differs_between_permission_scopes_and_index_versions(corpus, employee, hr_employee, trace):
    mine = scope(AskRequest(user=employee, question=HOTEL), trace)
    theirs = scope(AskRequest(user=hr_employee, question=HOTEL), trace)
    assert mine.read.key != theirs.read.key and mine.namespace != theirs.namespace
    IndexState.objects.filter(pk=1).update(version=F("version") + 1)
    later = scope(AskRequest(user=employee, question=HOTEL), trace)
    assert later.index_version == mine.index_version + 1 and later.namespace != mine.namespace


def test_the_namespace_differs_when_an_off_limits_topic_is_added_changed_or_switched_off(db, employee, trace, settings):
    # A cached answer skips the output guards (the answer-side topic check among them): after a topic changes,
    # answers cached before it are not served.
    settings.KB_TOPIC_REFRESH_S = 0.0
    before = scope(AskRequest(user=employee, question=HOTEL), trace).namespace
    topic = Topic.objects.create(name="Investment advice", examples="Should I buy bitcoin?", message="Ask an adviser.")
    added = scope(AskRequest(user=employee, question=HOTEL), trace).namespace
    topic.message = "Ask the pensions team."
    topic.save()
    changed = scope(AskRequest(user=employee, question=HOTEL), trace).namespace
    Topic.objects.filter(pk=topic.pk).update(active=False)
    switched_off = scope(AskRequest(user=employee, question=HOTEL), trace).namespace
    assert len({before, added, changed}) == 3 and switched_off == before
