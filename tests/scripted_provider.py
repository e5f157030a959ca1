"""In-process model providers that follow a script, for unit tests of the chain and the generate stage.

They are real `Provider` subclasses (the interface the chain calls), not mocks of the code under test: each
call to `stream` plays the next step of the script - text (optionally breaking off with an error after some
chunks), an error before any text, or a hang. Nothing leaves the machine. The SDK's own exception types are
built with `status_error` so that `kb.llm.resilience.classify` sees what the Anthropic SDK would raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kb.llm.providers import ModelRequest, Provider, StreamEnd, TextDelta, Usage


@dataclass(frozen=True)
class Say:
    """Stream `text` a word at a time; with `error`, raise it after `chunks_before_error` words."""

    text: str
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=100, output_tokens=20))
    error: BaseException | None = None
    chunks_before_error: int = 0
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Fail:
    """Raise `error` before any text."""

    error: BaseException


@dataclass(frozen=True)
class Hang:
    """Send nothing for a long time (the chain's timeouts must cut it off)."""

    seconds: float = 60.0


Step = Say | Fail | Hang


class ScriptedProvider(Provider):
    """Plays `steps` in order, one per call; once they run out, every call plays `then`."""

    def __init__(self, link: str, *steps: Step, then: Step | None = None, remote: bool | None = None) -> None:
        self.link = link
        self.model = link.partition(":")[2] or link
        self.remote = link != "extractive" if remote is None else remote
        self.steps = list(steps)
        self.then = then if then is not None else Say(f"An answer from {link} [1].")
        self.requests: list[ModelRequest] = []

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | StreamEnd]:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else self.then
        if isinstance(step, Fail):
            raise step.error
        if isinstance(step, Hang):
            await asyncio.sleep(step.seconds)
            return
        words = step.text.split(" ")
        for number, word in enumerate(words):
            if step.error is not None and number == step.chunks_before_error:
                raise step.error
            if step.chunk_delay_s:
                await asyncio.sleep(step.chunk_delay_s)
            yield TextDelta(word if number == len(words) - 1 else word + " ")
        if step.error is not None:
            raise step.error
        yield StreamEnd(usage=step.usage, stop_reason="end_turn")


def status_error(status: int, *, headers: dict[str, str] | None = None, error_type: str = "api_error"):
    """The SDK's `APIStatusError` for an HTTP status, as the Anthropic client raises it."""
    import anthropic
    import httpx2

    response = httpx2.Response(
        status, request=httpx2.Request("POST", "https://api.anthropic.com/v1/messages"), headers=headers or {}
    )
    return anthropic.APIStatusError(
        f"Error code: {status}", response=response, body={"error": {"type": error_type, "message": "scripted"}}
    )


def stream_error_event(error_type: str = "overloaded_error"):
    """An `error` event inside a stream: the SDK raises it with the stream's status, 200 (GUIDE §6)."""
    return status_error(200, error_type=error_type)
