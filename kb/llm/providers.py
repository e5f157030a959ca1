"""Model providers behind one small interface: `stream(request)` yields text deltas and then one `StreamEnd`.

- `AnthropicProvider`: Claude through the official SDK's async client, SDK retries off (the chain retries,
  with its own timeouts, backoff and breaker), the static system prompt marked for prompt caching.
- `ExtractiveProvider`: offline; quotes the sentences, steps or table rows that answer the question, each with
  its `[n]`, under a label saying that no model wrote it, or says that the documents do not cover it
  (`kb.llm.extractive`). It needs nothing but the passages and the local embedding model, so it answers
  through any outage.
"""

from __future__ import annotations

import asyncio
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

from django.conf import settings

from kb.llm.extractive import EXTRACTIVE_LABEL, extractive_answer

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
    link: str  # as named in KB_MODELS: "anthropic:claude-...", "extractive"
    model: str
    remote: bool

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


# --- Extractive (kb/llm/extractive.py) ----------------------------------------------------------------------


class ExtractiveProvider(Provider):
    remote = False
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
    raise ValueError(f"unknown model link {link!r}")
