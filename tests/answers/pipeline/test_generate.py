"""Stage 7, generate: the chain's text streamed through the screen as delta/reset/notice events, ending with
the draft `Ending` or a `Stop`. The links are scripted in-process providers (tests/scripted_provider.py) put in
place of `provider_for`; nothing leaves the machine."""

from __future__ import annotations

import asyncio

import pytest

from kb.answers.models import Outcome
from kb.answers.pipeline import generate as stage
from kb.answers.pipeline.evidence import NOT_COVERED
from kb.answers.pipeline.generate import MISCONFIGURED, NO_MODEL_ANSWER, REGENERATE_REMINDER, fallback_notice
from kb.answers.pipeline.types import Ending, Stop
from kb.llm import resilience
from kb.llm.chain import partial_notice
from kb.llm.providers import EXTRACTIVE, EXTRACTIVE_LABEL, ExtractiveProvider
from tests.answers.pipeline.conftest import FALLBACK, PRIMARY, stage_inputs
from tests.answers.test_ask import _shown_text as shown
from tests.scripted_provider import Fail, Say, ScriptedProvider, status_error, stream_error_event

CITED = "The hotel limit is 180 euros per night in Amsterdam [1]."
UNCITED = "Hotels are limited to a sensible amount per night."


@pytest.fixture(autouse=True)
def chain_settings(settings):
    settings.KB_LLM_RETRIES = 0
    settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 5.0
    settings.KB_LLM_TOTAL_TIMEOUT_S = 10.0
    resilience.breakers_reset()
    yield
    resilience.breakers_reset()


@pytest.fixture
def links(monkeypatch):
    """Scripted providers by link, put in place of the real ones."""
    providers: dict = {EXTRACTIVE: ExtractiveProvider()}
    monkeypatch.setattr(stage, "provider_for", lambda link: providers[link])
    return providers


def generated(inputs) -> tuple[list[dict], Ending | Stop]:
    async def collect() -> list:
        return [item async for item in stage.generate(inputs.begun, inputs.evidence)]

    items = asyncio.run(collect())
    assert all(isinstance(item, dict) for item in items[:-1]) and not isinstance(items[-1], dict)
    return items[:-1], items[-1]


def test_a_cited_answer_streams_as_deltas_and_ends_with_its_draft(corpus, employee, links):
    links[PRIMARY] = primary = ScriptedProvider(PRIMARY, Say(CITED))
    inputs = stage_inputs(employee, chain=(PRIMARY, EXTRACTIVE))
    events, draft = generated(inputs)
    assert {event["type"] for event in events} == {"delta"} and shown(events) == CITED
    assert isinstance(draft, Ending) and draft.outcome == Outcome.ANSWERED and draft.answer == CITED
    assert draft.model == PRIMARY and not draft.fallback_used and draft.cost_usd > 0
    assert [c["n"] for c in draft.citations] == [1] and draft.citations[0]["document_id"] == corpus.travel.pk
    assert [(a["link"], a["outcome"]) for a in draft.attempts] == [(PRIMARY, "ok")]
    assert primary.requests[0] is inputs.evidence.model_request
    assert {"overhead_ms", "first_token_ms"} <= set(inputs.trace.latency) and inputs.trace.notices == []


def test_a_fallback_link_answers_with_a_notice(corpus, employee, links):
    links[PRIMARY] = ScriptedProvider(PRIMARY, Fail(status_error(503)))
    links[FALLBACK] = ScriptedProvider(FALLBACK, Say(CITED))
    inputs = stage_inputs(employee, chain=(PRIMARY, FALLBACK, EXTRACTIVE))
    events, draft = generated(inputs)
    assert events[0] == {"type": "notice", "text": fallback_notice(FALLBACK)}
    assert inputs.trace.notices == [fallback_notice(FALLBACK)]
    assert draft.model == FALLBACK and draft.fallback_used and draft.attempts[0]["reason"] == "503"


def test_a_failure_mid_stream_resets_the_shown_text_and_the_next_link_replaces_it(corpus, employee, links):
    broken = Say(
        "Partial sentence goes out. Words that must vanish [1].", error=stream_error_event(), chunks_before_error=6
    )
    links[PRIMARY] = ScriptedProvider(PRIMARY, broken)
    links[FALLBACK] = ScriptedProvider(FALLBACK, Say(CITED))
    inputs = stage_inputs(employee, chain=(PRIMARY, FALLBACK, EXTRACTIVE))
    events, draft = generated(inputs)
    kinds = [event["type"] for event in events]
    reset = kinds.index("reset")
    assert "delta" in kinds[:reset], "a whole sentence went out before the failure"
    assert events[reset]["notice"] == partial_notice(PRIMARY)
    assert shown(events) == CITED == draft.answer and "vanish" not in draft.answer
    assert inputs.trace.notices == [partial_notice(PRIMARY), fallback_notice(FALLBACK)]


def test_an_uncited_answer_is_asked_for_again_once_with_a_reminder(corpus, employee, links):
    links[PRIMARY] = primary = ScriptedProvider(PRIMARY, Say(UNCITED), Say(CITED))
    inputs = stage_inputs(employee, chain=(PRIMARY, EXTRACTIVE))
    events, draft = generated(inputs)
    assert primary.calls == 2 and primary.requests[1].user == primary.requests[0].user + REGENERATE_REMINDER
    resets = [event for event in events if event["type"] == "reset"]
    assert len(resets) == 1 and "cited no source" in resets[0]["notice"]
    assert shown(events) == CITED and draft.answer == CITED and draft.citations
    assert [a["outcome"] for a in draft.attempts] == ["ok", "ok"], "both rounds' attempts are recorded"


def test_a_second_uncited_answer_is_not_asked_for_a_third_time(corpus, employee, links):
    links[PRIMARY] = primary = ScriptedProvider(PRIMARY, then=Say(UNCITED))
    _, draft = generated(stage_inputs(employee, chain=(PRIMARY, EXTRACTIVE)))
    assert primary.calls == 2 and isinstance(draft, Ending)
    assert draft.answer == UNCITED and draft.citations == [] and draft.outcome == Outcome.ANSWERED


def test_the_model_saying_not_covered_is_a_refusal_with_the_nearest_documents(corpus, employee, links):
    links[PRIMARY] = primary = ScriptedProvider(PRIMARY, Say(NOT_COVERED))
    inputs = stage_inputs(employee, "What is the hotel limit per night in Berlin?", chain=(PRIMARY, EXTRACTIVE))
    _, stop = generated(inputs)
    assert primary.calls == 1, "a refusal cites nothing and is not asked for again"
    assert isinstance(stop, Stop) and stop.retrieved is inputs.evidence.retrieved
    ending = stop.ending
    assert ending.outcome == Outcome.REFUSED and ending.refusal_reason == "not_covered_by_model"
    assert ending.citations == [] and ending.nearest[0]["title"] == "Travel policy" and ending.model == PRIMARY


def test_markers_naming_no_given_passage_are_removed_with_a_notice(corpus, employee, links):
    links[PRIMARY] = ScriptedProvider(PRIMARY, Say("Hotels cost 180 euros per night in Amsterdam [1][99]."))
    inputs = stage_inputs(employee, chain=(PRIMARY, EXTRACTIVE))
    _, draft = generated(inputs)
    assert "[99]" not in draft.answer and "[1]" in draft.answer and draft.invalid == [99]
    assert [c["n"] for c in draft.citations] == [1]
    assert any("named no passage" in notice for notice in inputs.trace.notices)


def test_a_configuration_error_gives_the_extractive_answer_and_says_so(corpus, employee, links):
    links[PRIMARY] = ScriptedProvider(PRIMARY, Fail(status_error(401)))
    links[FALLBACK] = fallback = ScriptedProvider(FALLBACK)
    inputs = stage_inputs(employee, chain=(PRIMARY, FALLBACK, EXTRACTIVE))
    events, draft = generated(inputs)
    assert fallback.calls == 0 and draft.model == EXTRACTIVE and EXTRACTIVE_LABEL in draft.answer
    assert {"type": "notice", "text": fallback_notice(EXTRACTIVE)} in events
    # The answer as recorded says why once: misconfigured, not also "unavailable just now".
    assert inputs.trace.notices == [MISCONFIGURED]


def test_when_no_link_answers_the_stop_is_failed_with_every_reason(corpus, employee, links):
    links[PRIMARY] = ScriptedProvider(PRIMARY, Fail(status_error(500)))
    links[FALLBACK] = ScriptedProvider(FALLBACK, Fail(status_error(529)))
    inputs = stage_inputs(employee, chain=(PRIMARY, FALLBACK))
    events, stop = generated(inputs)
    assert events == [] and isinstance(stop, Stop) and stop.retrieved is inputs.evidence.retrieved
    ending = stop.ending
    assert ending.outcome == Outcome.FAILED and ending.answer == NO_MODEL_ANSWER
    assert ending.error == f"{PRIMARY}: 500; {FALLBACK}: 529" and len(ending.attempts) == 2
