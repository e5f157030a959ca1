"""Model providers behind one small interface: `stream(request)` yields text deltas and then one `StreamEnd`.

- `AnthropicProvider`: Claude through the official SDK's async client, SDK retries off (the chain retries,
  with its own timeouts, backoff and breaker), the static system prompt marked for prompt caching.
- `OpenAICompatibleProvider`: OpenAI, Azure OpenAI and OpenAI-compatible servers (vLLM, Ollama, llama.cpp
  server, LiteLLM proxy) through the official `openai` SDK's async client, streaming chat completions with the
  usage in the last chunk, SDK retries off as above. `openai:MODEL` uses OPENAI_API_KEY / OPENAI_BASE_URL;
  `NAME:MODEL` a server named in KB_ENDPOINTS (kb/llm/links.py).
- `ExtractiveProvider`: offline; quotes the sentences, steps or table rows that answer the question, each with
  its `[n]`, under a label saying that no model wrote it, or says that the documents do not cover it
  (`kb.llm.extractive`). It needs nothing but the passages and the local embedding model, so it answers
  through any outage.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

from django.conf import settings

from kb.llm.extractive import EXTRACTIVE_LABEL, extractive_answer
from kb.llm.links import Endpoint

EXTRACTIVE = "extractive"
__all__ = ["EXTRACTIVE_LABEL", "extractive_answer"]


@dataclass(frozen=True)
class Passage:
    n: int
    title: str
    heading: str
    page: str
    text: str
    untrusted: bool = False  # flagged at ingest as reading like instructions to a model


@dataclass
class ModelRequest:
    system: str  # the versioned prompt's static part (cached by Anthropic)
    user: str  # the rendered user message: passages, history, question
    question: str
    passages: list[Passage]
    max_tokens: int = 1024


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None


class Provider(ABC):
    link: str  # as named in KB_MODELS: "anthropic:claude-...", "openai:gpt-...", "selfhosted:llama...", "extractive"
    model: str
    remote: bool
    internal: bool = False  # on the company's own infrastructure: may receive "internal models only" passages
    metered: bool = True  # billed per token: an unknown model is costed at the dearest known price

    @abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | StreamEnd]: ...


# --- Anthropic --------------------------------------------------------------------------------------------

# One async client per event loop: its connection pool belongs to the loop that opened it (uvicorn has one;
# a management command or a test runs its own).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, object] = weakref.WeakKeyDictionary()


def anthropic_client():
    import anthropic

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = anthropic.AsyncAnthropic(
            api_key=settings.ANTHROPIC_API_KEY,
            base_url=settings.ANTHROPIC_BASE_URL or None,
            max_retries=0,
            timeout=anthropic.Timeout(settings.KB_LLM_TOTAL_TIMEOUT_S, connect=settings.KB_LLM_CONNECT_TIMEOUT_S),
        )
        _clients[loop] = client
    return client


class AnthropicProvider(Provider):
    remote = True
    internal = False

    def __init__(self, model: str) -> None:
        self.model = model
        self.link = f"anthropic:{model}"

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | StreamEnd]:
        client = anthropic_client()
        async with client.messages.stream(
            model=self.model,
            max_tokens=request.max_tokens,
            # The system prompt is the same for every question: cache it (GUIDE §6; billed at a tenth on a hit).
            system=[{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": request.user}],
        ) as stream:
            async for text in stream.text_stream:
                if text:
                    yield TextDelta(text)
            message = await stream.get_final_message()
        usage = message.usage
        yield StreamEnd(
            usage=Usage(
                input_tokens=usage.input_tokens or 0,
                output_tokens=usage.output_tokens or 0,
                cache_read_input_tokens=getattr(usage, "cache_read_input_tokens", 0) or 0,
                cache_creation_input_tokens=getattr(usage, "cache_creation_input_tokens", 0) or 0,
            ),
            stop_reason=message.stop_reason,
        )


# --- OpenAI-compatible -------------------------------------------------------------------------------------


class StreamCut(Exception):
    """The stream ended without a finish reason: the server or a proxy cut it short."""


OPENAI = Endpoint("openai", "", internal=False)
NO_KEY = "no-key"  # the SDK insists on a key; vLLM and Ollama ignore it unless started with one
_openai_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()


def openai_client(endpoint: Endpoint):
    """One async client per event loop and endpoint, with our timeouts and the SDK's retries off."""
    import openai

    loop = asyncio.get_running_loop()
    clients = _openai_clients.setdefault(loop, {})
    if endpoint.name == OPENAI.name:
        api_key, base_url = settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL or None
    else:
        api_key = (os.environ.get(endpoint.key_env, "") if endpoint.key_env else "") or NO_KEY
        base_url = endpoint.base_url
    key = (endpoint.name, base_url, api_key)
    client = clients.get(key)
    if client is None:
        client = clients[key] = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(settings.KB_LLM_TOTAL_TIMEOUT_S, connect=settings.KB_LLM_CONNECT_TIMEOUT_S),
        )
    return client


def openai_usage(usage) -> Usage:
    """Chat-completions usage in Anthropic's terms: OpenAI's prompt tokens include the cached ones."""
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
    written = (getattr(details, "cache_write_tokens", 0) or 0) if details else 0
    return Usage(
        input_tokens=max(0, (usage.prompt_tokens or 0) - cached - written),
        output_tokens=usage.completion_tokens or 0,
        cache_read_input_tokens=cached,
        cache_creation_input_tokens=written,
    )


class OpenAICompatibleProvider(Provider):
    remote = True

    def __init__(self, model: str, endpoint: Endpoint = OPENAI) -> None:
        self.model = model
        self.endpoint = endpoint
        self.link = f"{endpoint.name}:{model}"
        self.internal = endpoint.internal
        # A model on the company's own server is billed by no one per token unless the price table names it; a
        # named endpoint outside (a hosted vendor's) is, and costs as the dearest known model until it is priced.
        self.metered = not endpoint.internal

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | StreamEnd]:
        client = openai_client(self.endpoint)
        # OpenAI's newer models take only max_completion_tokens; servers of other makers know max_tokens.
        limit = {"max_completion_tokens" if self.endpoint.name == OPENAI.name else "max_tokens": request.max_tokens}
        stream = await client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.user}],
            stream=True,
            stream_options={"include_usage": True},  # usage arrives in a last chunk without choices
            **limit,
        )
        usage, finish = Usage(), None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = openai_usage(chunk.usage)
                for choice in chunk.choices or ():
                    if choice.delta is not None and choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    finish = choice.finish_reason or finish
        if finish is None:
            raise StreamCut("the stream ended without a finish reason")
        yield StreamEnd(usage=usage, stop_reason=finish)


# --- Extractive (kb/llm/extractive.py) ----------------------------------------------------------------------


class ExtractiveProvider(Provider):
    remote = False
    internal = True
    metered = False
    link = EXTRACTIVE
    model = EXTRACTIVE

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | StreamEnd]:
        # Scoring embeds the passages' sentences: off the event loop.
        text = await asyncio.to_thread(extractive_answer, request.question, request.passages)
        if text:
            yield TextDelta(text)
        yield StreamEnd(stop_reason="end_turn")


def provider_for(link: str) -> Provider:
    if link == EXTRACTIVE:
        return ExtractiveProvider()
    kind, _, model = link.partition(":")
    if kind == "anthropic" and model:
        return AnthropicProvider(model)
    if kind == OPENAI.name and model:
        return OpenAICompatibleProvider(model)
    endpoint = settings.KB_ENDPOINTS.get(kind)
    if endpoint is not None and model:
        return OpenAICompatibleProvider(model, endpoint)
    raise ValueError(f"unknown model link {link!r}")
