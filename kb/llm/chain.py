"""The model chain: links tried in order, each with timeouts, bounded retries and a circuit breaker.

`run_chain` is an async generator of events. Text is streamed as it comes; when a link fails after some of
its text went out, a `Discard` event tells the consumer to drop that partial text (the next link's answer
replaces it, so nothing is shown twice or mixed). It always ends with one `ChainDone`.

Policy (issue #4, GUIDE §6):
- transient failures (connection, 408/409/429/5xx/529, an error event inside a stream) are retried on the
  same link up to KB_LLM_RETRIES times with full-jitter backoff that honours retry-after; then the next link;
- timeouts (no first token within KB_LLM_FIRST_TOKEN_TIMEOUT_S, or the whole answer beyond
  KB_LLM_TOTAL_TIMEOUT_S) move on at once: a link that hung once is likely to hang again, and the reader is
  waiting;
- empty or malformed output moves on without a retry;
- 400/401/403/404 are configuration errors: reported to operators, no retry, no other remote link;
- a link whose breaker is open is skipped without a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

from django.conf import settings

from kb import metrics
from kb.llm import resilience
from kb.llm.cost import cost_usd
from kb.llm.providers import ModelRequest, Provider, StreamEnd, TextDelta, Usage
from kb.llm.resilience import EmptyOutput, FirstTokenTimeout, Kind, TotalTimeout, classify

logger = logging.getLogger(__name__)


@dataclass
class Attempt:
    link: str
    attempt: int  # 1-based per link; 0 for a link skipped without a call
    outcome: str  # "ok", "failed", "skipped"
    reason: str = ""  # failure or skip reason: "529", "first_token_timeout", "circuit_open", "config_error"...
    status: int | None = None
    ms: float = 0.0
    partial_chars: int = 0  # text streamed before the failure, then discarded
    waited_s: float = 0.0  # backoff before this attempt

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LinkStart:
    link: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Discard:
    link: str
    chars: int
    notice: str


@dataclass
class ChainDone:
    link: str | None  # who answered; None when no link could
    text: str = ""
    stop_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    config_error: bool = False

    @property
    def fallback_used(self) -> bool:
        return bool(self.attempts) and self.link is not None and self.attempts[0].link != self.link

    @property
    def fallback_reasons(self) -> list[str]:
        return [f"{a.link}: {a.reason}" for a in self.attempts if a.outcome != "ok"]


Event = LinkStart | Delta | Discard | ChainDone


async def _timed(stream: AsyncIterator[TextDelta | StreamEnd]) -> AsyncIterator[TextDelta | StreamEnd]:
    """`stream`, cut off when no text arrives within the first-token timeout or it runs past the total."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    first_deadline = started + settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S
    total_deadline = started + settings.KB_LLM_TOTAL_TIMEOUT_S
    got_text = False
    iterator = stream.__aiter__()
    try:
        while True:
            deadline = total_deadline if got_text else min(first_deadline, total_deadline)
            timer = asyncio.timeout_at(deadline)
            try:
                async with timer:
                    event = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not timer.expired():
                    raise
                if got_text or deadline == total_deadline:
                    raise TotalTimeout(f"no complete answer within {settings.KB_LLM_TOTAL_TIMEOUT_S:g} s") from None
                raise FirstTokenTimeout(f"no text within {settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S:g} s") from None
            if isinstance(event, TextDelta):
                got_text = True
            yield event
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def partial_notice(link: str) -> str:
    return f"The answer from {link} broke off; the next model's answer replaces it."


async def run_chain(
    links: list[Provider],
    request: ModelRequest,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[Event]:
    attempts: list[Attempt] = []
    usage = Usage()
    spent = 0.0
    config_error = False
    for provider in links:
        if provider.remote and config_error:
            attempts.append(Attempt(provider.link, 0, "skipped", "config_error"))
            continue
        breaker = resilience.breaker(provider.link) if provider.remote else None
        if breaker is not None and not breaker.allow():
            attempts.append(Attempt(provider.link, 0, "skipped", "circuit_open"))
            metrics.LLM_ATTEMPTS.labels(provider.link, "skipped_open").inc()
            continue
        number = 0
        waited = 0.0
        while True:
            number += 1
            started = time.perf_counter()
            parts: list[str] = []
            end = StreamEnd()
            announced = False
            try:
                async for event in _timed(provider.stream(request)):
                    if isinstance(event, TextDelta):
                        if not announced:
                            yield LinkStart(provider.link)
                            announced = True
                        parts.append(event.text)
                        yield Delta(event.text)
                    else:
                        end = event
                if not "".join(parts).strip():
                    raise EmptyOutput("the model returned no text")
            except asyncio.CancelledError:
                if breaker is not None:
                    breaker.release()
                raise
            except Exception as exc:
                failure = classify(exc)
                partial = sum(map(len, parts))
                attempts.append(
                    Attempt(
                        provider.link,
                        number,
                        "failed",
                        failure.reason,
                        failure.status,
                        _ms(started),
                        partial,
                        waited,
                    )
                )
                metrics.LLM_ATTEMPTS.labels(provider.link, "failed").inc()
                logger.warning(
                    "model %s attempt %d failed (%s): %s", provider.link, number, failure.reason, failure.detail
                )
                if partial:
                    yield Discard(provider.link, partial, partial_notice(provider.link))
                if breaker is not None:
                    breaker.failure()
                if failure.kind == Kind.CONFIG:
                    resilience.config_error_report(provider.link, failure)
                    config_error = True
                    break
                if failure.kind == Kind.EMPTY or failure.reason in ("first_token_timeout", "total_timeout"):
                    break
                if number > settings.KB_LLM_RETRIES:
                    break
                wait = resilience.backoff_s(number, failure.retry_after_s)
                if wait is None:
                    attempts[-1].reason += " (retry-after too long)"
                    break
                await sleep(wait)
                waited = wait
                if breaker is not None and not breaker.allow():
                    break
                continue
            # Success.
            if breaker is not None:
                breaker.success()
            cost = cost_usd(provider.model, end.usage, metered=provider.metered)
            usage.add(end.usage)
            spent += cost
            attempts.append(Attempt(provider.link, number, "ok", "", None, _ms(started), 0, waited))
            metrics.LLM_ATTEMPTS.labels(provider.link, "ok").inc()
            for kind, value in end.usage.as_dict().items():
                if value:
                    metrics.LLM_TOKENS.labels(provider.link, kind).inc(value)
            if cost:
                metrics.LLM_COST.labels(provider.link).inc(cost)
            yield ChainDone(provider.link, "".join(parts), end.stop_reason, attempts, usage, spent, config_error)
            return
    yield ChainDone(None, "", None, attempts, usage, spent, config_error)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
