"""Stage 6, route (kb/answers/pipeline/route.py): the tier from cheap signals, each tier its own chain
(KB_ROUTES), the budget applied to the tier's chain, and the route recorded with why. The residency rule is
tested end to end in tests/answers/test_residency.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kb.answers import services
from kb.answers.models import Exchange
from kb.answers.pipeline.route import DEFAULT, FAST, STRONG, documents_spanned, question_parts, route, tier_for
from kb.llm.providers import EXTRACTIVE
from tests.answers.pipeline.conftest import stage_inputs
from tests.conftest import OPENAI_LINK, PRIMARY

ROUTES = {FAST: [OPENAI_LINK, EXTRACTIVE], STRONG: [PRIMARY, OPENAI_LINK, EXTRACTIVE]}


@dataclass(frozen=True)
class Hit:
    document_id: int
    vector_rank: int | None
    bm25_rank: int | None


@pytest.mark.parametrize(
    ("question", "follow_up", "documents", "tier", "why"),
    [
        ("What is the hotel limit per night in Amsterdam?", False, 1, FAST, "single-document lookup"),
        ("And in Rotterdam?", True, 1, STRONG, "follow-up"),
        ("What is the difference between the Dutch and German mileage rates?", False, 1, STRONG, "comparison"),
        ("How do I report a lost laptop?", False, 1, STRONG, "procedure"),
        ("Who do I call, and how long until I get a replacement?", False, 1, STRONG, "several questions"),
        ("What is the hotel limit?", False, 2, STRONG, "passages span 2 documents"),
        (" ".join(["word"] * 31) + "?", False, 1, STRONG, "long question"),
    ],
)
def test_the_tier_comes_from_cheap_signals(settings, question, follow_up, documents, tier, why):
    settings.KB_ROUTE_LONG_QUESTION_WORDS = 30
    chosen, reasons = tier_for(question, follow_up=follow_up, documents=documents)
    assert chosen == tier and any(reason.startswith(why) for reason in reasons), reasons


def test_question_parts_counts_clauses_that_ask():
    assert question_parts("What's the hotel cap there?") == 1
    assert question_parts("Where and when do I show up, and what's the hotel cap?") == 3
    assert question_parts("I work from home a lot and need a chair.") == 0


def test_documents_spanned_counts_documents_both_legs_rank_near_the_top(settings):
    settings.KB_ROUTE_AGREED_RANK = 2
    assert documents_spanned([Hit(1, 1, 2), Hit(2, 2, None), Hit(3, 3, 1), Hit(1, 2, 1)]) == 1
    assert documents_spanned([Hit(1, 1, 2), Hit(2, 2, 1)]) == 2
    settings.KB_ROUTE_AGREED_RANK = 1
    assert documents_spanned([Hit(1, 1, 2), Hit(2, 2, 1)]) == 0
    assert documents_spanned([]) == 0


def test_without_routes_the_chain_is_the_budgets_and_the_route_is_recorded(corpus, employee, settings):
    settings.KB_ROUTES = {}
    inputs = stage_inputs(employee, chain=(PRIMARY, EXTRACTIVE))
    routed = route(inputs.scope, inputs.opened, inputs.evidence, inputs.trace)
    assert routed.tier == DEFAULT and routed.chain == (PRIMARY, EXTRACTIVE) and not routed.residency
    assert inputs.trace.route["tier"] == DEFAULT and "route_ms" in inputs.trace.latency


def test_each_tier_takes_its_own_chain_within_the_budget(corpus, employee, settings):
    settings.KB_ROUTES = ROUTES
    settings.OPENAI_API_KEY = "sk-test"
    settings.KB_ROUTE_AGREED_RANK = 1  # the lookup is judged on its words alone here
    inputs = stage_inputs(employee)
    routed = route(inputs.scope, inputs.opened, inputs.evidence, inputs.trace)
    assert routed.tier == FAST and routed.chain == (OPENAI_LINK, EXTRACTIVE)
    hard = stage_inputs(employee, "How do I book a hotel in Amsterdam, and what is the limit per night?")
    spent = {"user_spent": settings.KB_USER_DAILY_BUDGET_USD, "global_spent": 0.0}  # the user's budget is used up
    scope = type(hard.scope)(**{**hard.scope.__dict__, "spent": spent})
    routed = route(scope, hard.opened, hard.evidence, hard.trace)
    assert routed.tier == STRONG and routed.chain == (EXTRACTIVE,)
    assert {"procedure wording", "several questions"} <= set(routed.why)
    assert len(hard.trace.notices) == 1  # the tier's budget says what it did, once


def test_an_exchange_records_its_route_and_the_strong_tier_answers_a_comparison(
    fake_anthropic, fake_openai, corpus, employee, settings
):
    settings.KB_MODELS = [PRIMARY, EXTRACTIVE]
    settings.KB_ROUTES = ROUTES
    settings.KB_ROUTE_AGREED_RANK = 1
    lookup = services.ask("What is the hotel limit per night in Amsterdam?", employee)
    comparison = services.ask("Compare the hotel limits of Amsterdam and Rotterdam.", employee)
    assert lookup["model"] == OPENAI_LINK and comparison["model"] == PRIMARY
    assert [r.model for r in fake_openai.requests] == ["gpt-4.1-mini"]
    assert [r.model for r in fake_anthropic.requests] == ["claude-sonnet-5-5"]
    first, second = Exchange.objects.order_by("pk")
    assert (first.route, second.route) == (FAST, STRONG)
    assert second.routing["why"] == ["comparison wording"] and second.routing["chain"] == ROUTES[STRONG]
