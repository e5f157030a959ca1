"""The OpenAI-compatible provider (kb/llm/providers.py) through the official `openai` SDK against a fake
OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py), as `openai:MODEL` and as a named endpoint: streaming,
usage with cached tokens, retries, breakers per link, recovery mid-stream, configuration errors; and a chain that
mixes providers falls from Anthropic to the OpenAI-compatible link and back."""

from __future__ import annotations

import asyncio
import time

import pytest

from kb.llm import resilience
from kb.llm.chain import ChainDone, Delta, Discard, run_chain
from kb.llm.cost import budget_links, cost_usd, link_price
from kb.llm.links import Endpoint
from kb.llm.providers import EXTRACTIVE, ModelRequest, OpenAICompatibleProvider, Passage, Usage, provider_for
from tests.conftest import OPENAI_LINK, PRIMARY, SELFHOSTED_LINK
from tests.fake_anthropic import Reply as AnthropicReply
from tests.fake_openai import Reply

REQUEST = ModelRequest(
    system="Answer from the numbered passages only.",
    user='<passages>\n<passage n="1" document="Travel">\nThe hotel limit is 180 euros per night.\n</passage>\n'
    "</passages>\n<question>\nWhat is the hotel limit?\n</question>",
    question="What is the hotel limit?",
    passages=[Passage(1, "Travel", "Hotels", "", "The hotel limit is 180 euros per night.")],
    max_tokens=300,
)


@pytest.fixture(scope="module", autouse=True)
def embedding_model_loaded():
    """The extractive link embeds sentences: load the model before a first-token timeout is measured."""
    from kb.search import embeddings

    embeddings.get_model()


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def run(links: list[str], sleep: Sleeps | None = None) -> tuple[list, ChainDone]:
    providers = [provider_for(link) for link in links]

    async def collect() -> list:
        return [event async for event in run_chain(providers, REQUEST, sleep=sleep or Sleeps())]

    events = asyncio.run(collect())
    assert isinstance(events[-1], ChainDone)
    return events, events[-1]


def tried(done: ChainDone) -> list[tuple]:
    return [(a.link, a.attempt, a.outcome, a.reason) for a in done.attempts]


def shown(events: list) -> str:
    text = ""
    for event in events:
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Discard):
            text = ""
    return text


def test_it_streams_the_answer_and_counts_usage_with_cached_tokens(fake_openai):
    fake_openai.then(Reply(text="The limit is 180 euros [1].", prompt_tokens=1500, cached_tokens=1200))
    events, done = run([OPENAI_LINK, EXTRACTIVE])
    assert done.link == OPENAI_LINK and done.text == "The limit is 180 euros [1]." and done.stop_reason == "stop"
    assert len([e for e in events if isinstance(e, Delta)]) == 6  # streamed word by word
    # OpenAI's prompt tokens include the cached ones; kb counts them apart, as Anthropic reports them.
    assert done.usage == Usage(input_tokens=300, output_tokens=6, cache_read_input_tokens=1200)
    assert done.cost_usd == round((300 * 0.40 + 6 * 1.60 + 1200 * 0.10) / 1e6, 6) > 0
    (request,) = fake_openai.requests
    assert request.path == "/v1/chat/completions" and request.headers["authorization"] == "Bearer sk-openai-test-key"
    assert request.body["model"] == "gpt-4.1-mini" and request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["max_completion_tokens"] == 300
    assert [m["role"] for m in request.body["messages"]] == ["system", "user"]
    assert request.body["messages"][0]["content"] == REQUEST.system


def test_a_named_endpoint_gets_its_own_url_its_key_and_max_tokens(fake_openai, settings, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", "vllm-secret")
    settings.KB_ENDPOINTS = {
        "selfhosted": Endpoint("selfhosted", fake_openai.url, internal=True, key_env="VLLM_TEST_KEY"),
    }
    provider = provider_for(SELFHOSTED_LINK)
    assert isinstance(provider, OpenAICompatibleProvider) and provider.internal and not provider.metered
    _, done = run([SELFHOSTED_LINK, EXTRACTIVE])
    assert done.link == SELFHOSTED_LINK and done.usage.output_tokens > 0
    assert done.cost_usd == 0  # a self-hosted model not in the price table is billed by no one per token
    (request,) = fake_openai.requests
    assert request.headers["authorization"] == "Bearer vllm-secret"
    assert request.body["model"] == "llama-3.1-8b-instruct" and request.body["max_tokens"] == 300


def test_a_429_is_retried_after_its_retry_after(fake_openai):
    fake_openai.then(Reply(status=429, headers={"retry-after": "2"}))
    sleeps = Sleeps()
    _, done = run([OPENAI_LINK, EXTRACTIVE], sleeps)
    assert tried(done) == [(OPENAI_LINK, 1, "failed", "429"), (OPENAI_LINK, 2, "ok", "")]
    assert sleeps.waits[0] >= 2.0 and done.attempts[0].status == 429
    assert len(fake_openai.requests) == 2  # the SDK's own retries are off: every call is ours


def test_500s_are_retried_then_the_next_link_answers(fake_openai, settings):
    settings.KB_LLM_RETRIES = 2
    fake_openai.then(*[Reply(status=500)] * 3)
    _, done = run([OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE])
    assert tried(done) == [
        (OPENAI_LINK, 1, "failed", "500"),
        (OPENAI_LINK, 2, "failed", "500"),
        (OPENAI_LINK, 3, "failed", "500"),
        (SELFHOSTED_LINK, 1, "ok", ""),
    ]
    assert done.fallback_used


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (Reply(text="The limit is one hundred and eighty euros [1].", error_after_chunks=3), "server_error"),
        (Reply(text="The limit is one hundred and eighty euros [1].", cut_after_chunks=3), "connection"),
        (Reply(text="The limit is one hundred and eighty euros [1].", finish=None), "stream_cut"),
    ],
    ids=["error-object-in-stream", "connection-cut", "ended-without-finish"],
)
def test_a_stream_broken_mid_answer_is_discarded_and_retried(fake_openai, broken, reason):
    fake_openai.then(broken, Reply(text="The limit is 180 euros [1]."))
    events, done = run([OPENAI_LINK, EXTRACTIVE])
    assert tried(done) == [(OPENAI_LINK, 1, "failed", reason), (OPENAI_LINK, 2, "ok", "")]
    discards = [e for e in events if isinstance(e, Discard)]
    assert len(discards) == 1 and discards[0].chars > 0
    assert shown(events) == done.text == "The limit is 180 euros [1]."


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_configuration_error_is_not_retried_and_skips_other_remote_links(fake_openai, status):
    fake_openai.then(Reply(status=status))
    _, done = run([OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE])
    assert tried(done)[:2] == [(OPENAI_LINK, 1, "failed", str(status)), (SELFHOSTED_LINK, 0, "skipped", "config_error")]
    assert done.link == EXTRACTIVE and done.config_error
    assert len(fake_openai.requests) == 1
    status_now = resilience.model_status()
    assert status_now["links"][OPENAI_LINK]["config_error"]["status"] == str(status)
    assert "sk-openai-test-key" not in str(status_now)


def test_breakers_are_per_link_on_one_server(fake_openai, settings):
    settings.KB_BREAKER_FAILURES = 2
    settings.KB_LLM_RETRIES = 0
    resilience.breakers_reset()
    # The server refuses one model (overloaded) and serves the other.
    fake_openai.default = lambda body: Reply(status=503) if body["model"] == "gpt-4.1-mini" else Reply()
    for _ in range(2):
        run([OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE])
    assert resilience.breaker(OPENAI_LINK).snapshot()["state"] == "open"
    before = len(fake_openai.requests)
    _, done = run([OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE])
    assert tried(done) == [(OPENAI_LINK, 0, "skipped", "circuit_open"), (SELFHOSTED_LINK, 1, "ok", "")]
    assert [r.model for r in fake_openai.requests[before:]] == ["llama-3.1-8b-instruct"]
    assert resilience.breaker(SELFHOSTED_LINK).snapshot()["state"] == "closed"


def test_readiness_shows_each_link_with_its_provider(fake_openai, fake_anthropic, settings):
    settings.KB_MODELS = [PRIMARY, OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE]
    links = resilience.model_status()["links"]
    assert list(links) == settings.KB_MODELS
    assert links[PRIMARY]["provider"] == "anthropic" and links[OPENAI_LINK]["provider"] == "openai"
    expected = {"provider": "openai-compatible", "endpoint": "selfhosted", "internal": True}
    assert expected.items() <= links[SELFHOSTED_LINK].items()
    assert not links[OPENAI_LINK]["internal"] and links[EXTRACTIVE]["internal"]
    assert all(entry["state"] == "closed" for entry in links.values())


def test_a_mixed_chain_falls_from_anthropic_to_openai_and_back(fake_openai, fake_anthropic, settings):
    settings.KB_MODELS = [PRIMARY, OPENAI_LINK, EXTRACTIVE]
    settings.KB_LLM_RETRIES = 1
    settings.KB_BREAKER_FAILURES = 2
    settings.KB_BREAKER_COOLDOWN_S = 0.5
    resilience.breakers_reset()
    links = [PRIMARY, OPENAI_LINK, EXTRACTIVE]
    # Anthropic is down: each call fails, OpenAI answers; the breaker opens after two failed calls.
    fake_anthropic.then(AnthropicReply(status=529), AnthropicReply(status=529))
    _, done = run(links)
    assert done.link == OPENAI_LINK and done.fallback_used
    assert tried(done)[:2] == [(PRIMARY, 1, "failed", "529"), (PRIMARY, 2, "failed", "529")]
    # The open breaker skips Anthropic without a call while it cools down.
    calls = len(fake_anthropic.requests)
    _, done = run(links)
    assert tried(done) == [(PRIMARY, 0, "skipped", "circuit_open"), (OPENAI_LINK, 1, "ok", "")]
    assert len(fake_anthropic.requests) == calls
    # Anthropic is back: after the cooldown its probe call answers and the chain is back on its primary.
    time.sleep(0.6)
    _, done = run(links)
    assert done.link == PRIMARY and not done.fallback_used
    assert resilience.breaker(PRIMARY).snapshot()["state"] == "closed"
    assert len(fake_openai.requests) == 2


def test_prices_cover_both_providers(settings):
    settings.KB_ENDPOINTS = {
        "selfhosted": Endpoint("selfhosted", "http://127.0.0.1:9/v1", internal=True),
        # a named endpoint outside the company (a hosted vendor's server) is billed
        "hosted": Endpoint("hosted", "https://llm.example.com/v1", internal=False),
    }
    assert link_price("anthropic:claude-haiku-5-5") == (1.0, 5.0, 1.25, 0.10)
    assert link_price("openai:gpt-4.1-mini") == (0.40, 1.60, 0.40, 0.10)
    assert link_price("openai:gpt-4.1") == (2.0, 8.0, 2.0, 0.50)
    # An unknown vendor model costs the dearest price; an unknown self-hosted one nothing.
    assert link_price("openai:gpt-99") == max(settings.KB_MODEL_PRICES.values(), key=lambda p: (p[1], p[0]))
    assert link_price("selfhosted:llama-3.1-70b") == (0, 0, 0, 0)
    assert link_price("hosted:mixtral-8x22b") == max(settings.KB_MODEL_PRICES.values(), key=lambda p: (p[1], p[0]))
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_input_tokens=4000, cache_creation_input_tokens=10)
    assert cost_usd("gpt-4.1", usage) == round((1000 * 2 + 100 * 8 + 4000 * 0.5 + 10 * 2) / 1e6, 6)


def test_the_budget_downgrade_picks_the_cheapest_link_of_either_provider(settings):
    settings.KB_USER_DAILY_BUDGET_USD = 1.0
    settings.KB_BUDGET_DOWNGRADE_FRACTION = 0.8
    links = ["anthropic:claude-sonnet-5-5", "openai:gpt-4.1-mini", "anthropic:claude-haiku-5-5", EXTRACTIVE]
    decision = budget_links(links, user_spent=0.85, global_spent=0.0)
    assert decision.reason == "downgraded" and decision.links == ["openai:gpt-4.1-mini", EXTRACTIVE]
    assert budget_links(links, user_spent=1.0, global_spent=0.0).links == [EXTRACTIVE]
