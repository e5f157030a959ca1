"""The model chain (kb/llm/chain.py) with scripted in-process providers: retries, timeouts, moving on,
configuration errors, failures mid-stream, breakers, and what is recorded of each attempt. Waits between
retries go through run_chain's `sleep`, recorded here instead of slept."""

from __future__ import annotations

import asyncio

import pytest

from kb import metrics
from kb.llm import resilience
from kb.llm.chain import ChainDone, Delta, Discard, LinkStart, partial_notice, run_chain
from kb.llm.cost import cost_usd
from kb.llm.providers import EXTRACTIVE, EXTRACTIVE_LABEL, ExtractiveProvider, ModelRequest, Passage, Usage
from tests.scripted_provider import Fail, Hang, Say, ScriptedProvider, status_error, stream_error_event

PRIMARY = "anthropic:claude-sonnet-5-5"
FALLBACK = "anthropic:claude-haiku-5-5"

REQUEST = ModelRequest(
    system="Answer from the numbered passages only.",
    user="<passages>[1] The hotel limit is 180 euros per night in Amsterdam.</passages>",
    question="What is the hotel limit per night in Amsterdam?",
    passages=[Passage(1, "Travel policy", "Hotels", "", "The hotel limit is 180 euros per night in Amsterdam.")],
)


@pytest.fixture(autouse=True)
def chain_settings(settings):
    settings.KB_MODELS = [PRIMARY, FALLBACK, EXTRACTIVE]
    settings.KB_LLM_RETRIES = 2
    settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 5.0
    settings.KB_LLM_TOTAL_TIMEOUT_S = 10.0
    settings.KB_LLM_BACKOFF_BASE_S = 0.5
    settings.KB_LLM_BACKOFF_MAX_S = 2.0
    settings.KB_LLM_RETRY_AFTER_MAX_S = 5.0
    settings.KB_BREAKER_FAILURES = 5
    settings.KB_BREAKER_COOLDOWN_S = 30.0
    resilience.breakers_reset()
    yield settings
    resilience.breakers_reset()


class Sleeps:
    """run_chain's `sleep`: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(links, sleep: Sleeps | None = None, request: ModelRequest = REQUEST) -> tuple[list, ChainDone]:
    async def collect() -> list:
        return [event async for event in run_chain(links, request, sleep=sleep or Sleeps())]

    events = asyncio.run(collect())
    assert isinstance(events[-1], ChainDone) and not any(isinstance(e, ChainDone) for e in events[:-1])
    return events, events[-1]


def tried(done: ChainDone) -> list[tuple]:
    return [(a.link, a.attempt, a.outcome, a.reason) for a in done.attempts]


def text_of(events: list) -> str:
    """What a reader would see: deltas, with a discard dropping the text so far."""
    text = ""
    for event in events:
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Discard):
            text = ""
    return text


def test_the_first_link_answers_and_its_usage_and_cost_are_recorded():
    usage = Usage(input_tokens=1200, output_tokens=80, cache_read_input_tokens=900)
    primary = ScriptedProvider(PRIMARY, Say("Hotels cost at most 180 euros [1].", usage=usage))
    fallback = ScriptedProvider(FALLBACK)
    events, done = run([primary, fallback, ExtractiveProvider()])
    assert events[0] == LinkStart(PRIMARY)
    assert text_of(events) == done.text == "Hotels cost at most 180 euros [1]."
    assert done.link == PRIMARY and not done.fallback_used and done.stop_reason == "end_turn"
    assert tried(done) == [(PRIMARY, 1, "ok", "")]
    assert done.usage == usage and done.cost_usd == cost_usd("claude-sonnet-5-5", usage) > 0
    assert fallback.calls == 0 and primary.requests == [REQUEST]


def test_a_transient_failure_is_retried_after_a_jittered_backoff_then_succeeds(settings):
    primary = ScriptedProvider(PRIMARY, Fail(status_error(529)), Say("Hotels cost 180 euros [1]."))
    sleeps = Sleeps()
    _, done = run([primary, ScriptedProvider(FALLBACK), ExtractiveProvider()], sleeps)
    assert done.link == PRIMARY and not done.fallback_used and primary.calls == 2
    assert tried(done) == [(PRIMARY, 1, "failed", "529"), (PRIMARY, 2, "ok", "")]
    assert done.attempts[0].status == 529
    (wait,) = sleeps.waits
    assert 0 <= wait <= settings.KB_LLM_BACKOFF_BASE_S and done.attempts[1].waited_s == wait


def test_transient_failures_beyond_the_retries_move_on_to_the_next_link(settings):
    settings.KB_LLM_RETRIES = 2
    primary = ScriptedProvider(PRIMARY, then=Fail(status_error(503)))
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    sleeps = Sleeps()
    events, done = run([primary, fallback, ExtractiveProvider()], sleeps)
    assert primary.calls == 3 and len(sleeps.waits) == 2
    assert tried(done) == [(PRIMARY, n, "failed", "503") for n in (1, 2, 3)] + [(FALLBACK, 1, "ok", "")]
    assert done.link == FALLBACK and done.fallback_used
    assert done.fallback_reasons == [f"{PRIMARY}: 503"] * 3
    assert LinkStart(FALLBACK) in events and LinkStart(PRIMARY) not in events  # the primary never spoke


def test_retry_after_is_honoured():
    primary = ScriptedProvider(PRIMARY, Fail(status_error(429, headers={"retry-after": "1.5"})), Say("Yes [1]."))
    sleeps = Sleeps()
    _, done = run([primary, ScriptedProvider(FALLBACK), ExtractiveProvider()], sleeps)
    assert sleeps.waits[0] >= 1.5 and done.link == PRIMARY


def test_a_retry_after_beyond_the_maximum_moves_on_without_waiting(settings):
    settings.KB_LLM_RETRY_AFTER_MAX_S = 1.0
    primary = ScriptedProvider(PRIMARY, Fail(status_error(429, headers={"retry-after": "30"})))
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    sleeps = Sleeps()
    _, done = run([primary, fallback, ExtractiveProvider()], sleeps)
    assert sleeps.waits == [] and primary.calls == 1 and done.link == FALLBACK
    assert done.attempts[0].reason == "429 (retry-after too long)"


def test_a_hang_trips_the_first_token_timeout_and_moves_on_without_a_retry(settings):
    settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 0.1
    primary = ScriptedProvider(PRIMARY, Hang())
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    sleeps = Sleeps()
    _, done = run([primary, fallback, ExtractiveProvider()], sleeps)
    assert primary.calls == 1 and sleeps.waits == [], "a link that hung is not retried"
    assert tried(done)[0] == (PRIMARY, 1, "failed", "first_token_timeout") and done.link == FALLBACK
    assert 80 <= done.attempts[0].ms < 2000


def test_a_stream_past_the_total_timeout_is_cut_off_and_replaced(settings):
    settings.KB_LLM_TOTAL_TIMEOUT_S = 0.3
    slow = Say("one two three four five six seven eight [1]", chunk_delay_s=0.1)
    primary = ScriptedProvider(PRIMARY, slow)
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    events, done = run([primary, fallback, ExtractiveProvider()])
    assert tried(done)[0] == (PRIMARY, 1, "failed", "total_timeout") and primary.calls == 1
    assert any(isinstance(event, Discard) for event in events)
    assert "eight" not in text_of(events) and done.text == "The limit is 180 euros [1]."


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_output_moves_on_without_a_retry(text):
    primary = ScriptedProvider(PRIMARY, Say(text))
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    sleeps = Sleeps()
    _, done = run([primary, fallback, ExtractiveProvider()], sleeps)
    assert primary.calls == 1 and sleeps.waits == []
    assert tried(done) == [(PRIMARY, 1, "failed", "empty_output"), (FALLBACK, 1, "ok", "")]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_configuration_error_skips_the_other_remote_links_and_the_extractive_answer_answers(status):
    before = metrics.LLM_CONFIG_ERRORS.labels(PRIMARY, str(status))._value.get()
    primary = ScriptedProvider(PRIMARY, Fail(status_error(status)))
    fallback = ScriptedProvider(FALLBACK)
    sleeps = Sleeps()
    _, done = run([primary, fallback, ExtractiveProvider()], sleeps)
    assert primary.calls == 1 and fallback.calls == 0 and sleeps.waits == []
    assert tried(done) == [
        (PRIMARY, 1, "failed", str(status)),
        (FALLBACK, 0, "skipped", "config_error"),
        (EXTRACTIVE, 1, "ok", ""),
    ]
    assert done.link == EXTRACTIVE and done.config_error and done.fallback_used
    assert EXTRACTIVE_LABEL in done.text and "[1]" in done.text and done.cost_usd == 0
    assert metrics.LLM_CONFIG_ERRORS.labels(PRIMARY, str(status))._value.get() == before + 1
    status_now = resilience.model_status()
    assert not status_now["ok"] and status_now["links"][PRIMARY]["config_error"]["status"] == str(status)


def test_a_failure_mid_stream_is_discarded_and_the_next_link_replaces_it(settings):
    settings.KB_LLM_RETRIES = 0
    broken = Say("Half an answer from the primary [1].", error=stream_error_event(), chunks_before_error=3)
    primary = ScriptedProvider(PRIMARY, broken)
    fallback = ScriptedProvider(FALLBACK, Say("The limit is 180 euros [1]."))
    events, done = run([primary, fallback, ExtractiveProvider()])
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["LinkStart", "Delta", "Delta", "Delta", "Discard", "LinkStart"] + ["Delta"] * 6 + ["ChainDone"]
    discard = events[4]
    assert discard == Discard(PRIMARY, len("Half an answer "), partial_notice(PRIMARY))
    assert events[5] == LinkStart(FALLBACK)
    assert text_of(events) == done.text == "The limit is 180 euros [1]." and "Half" not in done.text
    failed = done.attempts[0]
    assert (failed.reason, failed.status, failed.partial_chars) == ("overloaded_error", 200, len("Half an answer "))


def test_an_error_event_mid_stream_is_retried_on_the_same_link():
    broken = Say("Words that must vanish [1].", error=stream_error_event(), chunks_before_error=2)
    primary = ScriptedProvider(PRIMARY, broken, Say("Hotels cost 180 euros [1]."))
    sleeps = Sleeps()
    events, done = run([primary, ScriptedProvider(FALLBACK), ExtractiveProvider()], sleeps)
    assert done.link == PRIMARY and primary.calls == 2 and len(sleeps.waits) == 1
    assert sum(isinstance(event, Discard) for event in events) == 1
    assert text_of(events) == "Hotels cost 180 euros [1]." and "vanish" not in done.text


def test_the_breaker_opens_after_consecutive_failures_skips_the_link_and_a_probe_closes_it(settings):
    settings.KB_BREAKER_FAILURES = 2
    settings.KB_BREAKER_COOLDOWN_S = 0.2
    settings.KB_LLM_RETRIES = 1
    primary = ScriptedProvider(PRIMARY, Fail(status_error(500)), Fail(status_error(500)))
    fallback = ScriptedProvider(FALLBACK, then=Say("The limit is 180 euros [1]."))
    _, first = run([primary, fallback, ExtractiveProvider()])
    assert first.link == FALLBACK and primary.calls == 2
    assert resilience.breaker(PRIMARY).state == resilience.State.OPEN
    assert metrics.LLM_BREAKER_STATE.labels(PRIMARY)._value.get() == 2

    _, second = run([primary, fallback, ExtractiveProvider()])
    assert primary.calls == 2, "an open breaker lets no call through"
    assert tried(second)[0] == (PRIMARY, 0, "skipped", "circuit_open") and second.link == FALLBACK

    asyncio.run(asyncio.sleep(0.25))  # the cooldown passes: one probe goes through, and its success closes it
    _, third = run([primary, fallback, ExtractiveProvider()])
    assert primary.calls == 3 and third.link == PRIMARY
    assert resilience.breaker(PRIMARY).state == resilience.State.CLOSED
    assert metrics.LLM_BREAKER_STATE.labels(PRIMARY)._value.get() == 0


def test_a_failed_probe_opens_the_breaker_again(settings):
    settings.KB_BREAKER_FAILURES = 1
    settings.KB_BREAKER_COOLDOWN_S = 0.1
    settings.KB_LLM_RETRIES = 0
    primary = ScriptedProvider(PRIMARY, then=Fail(status_error(503)))
    links = [primary, ScriptedProvider(FALLBACK), ExtractiveProvider()]
    run(links)
    assert resilience.breaker(PRIMARY).state == resilience.State.OPEN
    asyncio.run(asyncio.sleep(0.15))
    _, probe = run(links)
    assert primary.calls == 2 and tried(probe)[0] == (PRIMARY, 1, "failed", "503")
    assert resilience.breaker(PRIMARY).state == resilience.State.OPEN
    _, after = run(links)
    assert primary.calls == 2 and tried(after)[0][2:] == ("skipped", "circuit_open")


def test_a_fallback_answer_is_costed_at_its_own_model_price(settings):
    settings.KB_LLM_RETRIES = 0
    usage = Usage(input_tokens=1000, output_tokens=100)
    primary = ScriptedProvider(PRIMARY, Fail(status_error(500)))
    fallback = ScriptedProvider(FALLBACK, Say("Yes [1].", usage=usage))
    _, done = run([primary, fallback, ExtractiveProvider()])
    assert done.link == FALLBACK and done.usage == usage
    assert done.cost_usd == cost_usd("claude-haiku-5-5", usage) < cost_usd("claude-sonnet-5-5", usage)


def test_when_no_link_answers_the_chain_ends_without_one():
    primary = ScriptedProvider(PRIMARY, then=Fail(status_error(500)))
    nothing = ModelRequest(system="s", user="u", question="Anything?", passages=[])
    events, done = run([primary, ExtractiveProvider()], request=nothing)
    assert done.link is None and done.text == "" and not done.fallback_used
    assert [a.outcome for a in done.attempts] == ["failed"] * 4
    assert done.fallback_reasons[-1] == f"{EXTRACTIVE}: empty_output"
    assert not any(isinstance(event, Delta) for event in events)
