"""What the chain does about a failure: classify it, back off, and keep a circuit breaker per link.

Breakers and configuration errors live in the process (the web process asks the models); /readyz and
/metrics report them from there.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings

from kb import metrics

logger = logging.getLogger(__name__)


class Kind(StrEnum):
    TRANSIENT = "transient"  # retry this link, then move on
    EMPTY = "empty"  # the link answered nothing usable: move on without retrying
    CONFIG = "config"  # 400/401/403/404...: no retry, no other remote link; operators must act


@dataclass(frozen=True)
class Failure:
    kind: Kind
    reason: str  # short and stable, for the exchange record and metrics: "529", "timeout", "overloaded_error"
    detail: str = ""  # one line for the log; never contains the API key
    status: int | None = None
    retry_after_s: float | None = None


class EmptyOutput(Exception):
    """The model's answer was empty or malformed."""


class FirstTokenTimeout(Exception):
    pass


class TotalTimeout(Exception):
    pass


def classify(exc: BaseException) -> Failure:
    """The same classes for both SDKs (anthropic, openai): their error types mirror each other."""
    import anthropic
    import openai

    from kb.llm.providers import StreamCut

    if isinstance(exc, FirstTokenTimeout):
        return Failure(Kind.TRANSIENT, "first_token_timeout", str(exc))
    if isinstance(exc, TotalTimeout):
        return Failure(Kind.TRANSIENT, "total_timeout", str(exc))
    if isinstance(exc, EmptyOutput):
        return Failure(Kind.EMPTY, "empty_output", str(exc))
    if isinstance(exc, StreamCut):
        return Failure(Kind.TRANSIENT, "stream_cut", str(exc))
    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError):
        return Failure(Kind.TRANSIENT, "timeout", "the request timed out")
    if isinstance(exc, anthropic.APIConnectionError | openai.APIConnectionError):
        return Failure(Kind.TRANSIENT, "connection", f"cannot reach the API: {type(exc.__cause__ or exc).__name__}")
    if isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        status = exc.status_code
        error_type = _error_type(exc)
        if status == 200 or status is None:
            # An `error` event inside a stream arrives with the stream's status, 200 (GUIDE §6).
            return Failure(Kind.TRANSIENT, error_type or "stream_error", _message(exc), status)
        retry_after = _retry_after(exc)
        if status in (408, 409, 429) or status >= 500:
            return Failure(Kind.TRANSIENT, str(status), _message(exc), status, retry_after)
        return Failure(Kind.CONFIG, str(status), _message(exc), status)
    if isinstance(exc, anthropic.APIResponseValidationError | openai.APIResponseValidationError):
        return Failure(Kind.EMPTY, "malformed_response", str(exc)[:200])
    if isinstance(exc, openai.APIError):
        # An `error` object inside an OpenAI-compatible stream: the SDK raises it without a status.
        return Failure(Kind.TRANSIENT, _error_type(exc) or "stream_error", str(exc)[:200])
    if _is_transport_error(exc):
        # A stream cut mid-body surfaces as the HTTP library's own error, not the SDK's.
        return Failure(Kind.TRANSIENT, "connection", f"the connection broke: {type(exc).__name__}")
    return Failure(Kind.TRANSIENT, "error", f"{type(exc).__name__}: {str(exc)[:200]}")


def _is_transport_error(exc: BaseException) -> bool:
    """httpx's (anthropic) or httpx2's (openai) TransportError, without importing either by name here."""
    return any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0] in ("httpx", "httpx2")
        for cls in type(exc).__mro__
    )


def _error_type(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return error["type"]
    return getattr(exc, "type", None) or ""


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{exc.status_code} {body['error'].get('type', '')}: {str(body['error'].get('message', ''))[:200]}"
    if isinstance(body, dict) and "message" in body:  # the openai SDK keeps the inner error object
        return f"{exc.status_code} {body.get('type') or body.get('code') or ''}: {str(body['message'])[:200]}"
    return f"{getattr(exc, 'status_code', '')} {str(exc)[:200]}"


def _retry_after(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: rare from this API; fall back to our own backoff
    return None


def backoff_s(retry: int, retry_after_s: float | None = None, *, rng: random.Random | None = None) -> float | None:
    """Seconds to wait before retry number `retry` (1-based), or None when the server asks for longer than we
    are willing to wait (then the next link answers instead)."""
    uniform = rng.uniform if rng is not None else random.uniform
    ceiling = min(settings.KB_LLM_BACKOFF_MAX_S, settings.KB_LLM_BACKOFF_BASE_S * 2 ** (retry - 1))
    jittered = uniform(0, ceiling)  # "full jitter": spreads the retries of many clients apart
    if retry_after_s is None:
        return jittered
    if retry_after_s > settings.KB_LLM_RETRY_AFTER_MAX_S:
        return None
    return max(retry_after_s, jittered)


# --- circuit breaker --------------------------------------------------------------------------------------


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


class Breaker:
    """Opens after `failures` consecutive failed calls; after `cooldown_s` lets one probe call through
    (half-open): its success closes the breaker, its failure opens it for another cooldown."""

    def __init__(self, link: str, failures: int, cooldown_s: float, clock=time.monotonic) -> None:
        self.link = link
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = State.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probe_in_flight = False
        self._lock = threading.Lock()
        self._publish()

    def allow(self) -> bool:
        """May a call go to the link now? In half-open state only one caller at a time gets True."""
        with self._lock:
            if self.state == State.CLOSED:
                return True
            if self.state == State.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
                self.state = State.HALF_OPEN
                self.probe_in_flight = False
                self._publish()
            if self.state == State.HALF_OPEN and not self.probe_in_flight:
                self.probe_in_flight = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            if self.state != State.CLOSED:
                logger.info("circuit breaker for %s closed: the probe call succeeded", self.link)
            self.state = State.CLOSED
            self.consecutive = 0
            self.probe_in_flight = False
            self._publish()

    def failure(self) -> None:
        with self._lock:
            self.consecutive += 1
            if self.state == State.HALF_OPEN or (self.state == State.CLOSED and self.consecutive >= self.failures):
                logger.warning(
                    "circuit breaker for %s opened after %d consecutive failures; next probe in %.0f s",
                    self.link,
                    self.consecutive,
                    self.cooldown_s,
                )
                self.state = State.OPEN
                self.opened_at = self.clock()
            self.probe_in_flight = False
            self._publish()

    def release(self) -> None:
        """A call that was allowed ended with no verdict (cancelled): let another caller probe."""
        with self._lock:
            self.probe_in_flight = False

    def snapshot(self) -> dict:
        with self._lock:
            data = {"state": self.state.value, "consecutive_failures": self.consecutive}
            if self.state != State.CLOSED:
                data["retry_in_s"] = round(max(0.0, self.cooldown_s - (self.clock() - self.opened_at)), 1)
            return data

    def _publish(self) -> None:
        metrics.LLM_BREAKER_STATE.labels(self.link).set(STATE_VALUE[self.state])


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker(link: str) -> Breaker:
    with _breakers_lock:
        found = _breakers.get(link)
        if found is None or (found.failures, found.cooldown_s) != (
            settings.KB_BREAKER_FAILURES,
            settings.KB_BREAKER_COOLDOWN_S,
        ):
            found = _breakers[link] = Breaker(link, settings.KB_BREAKER_FAILURES, settings.KB_BREAKER_COOLDOWN_S)
        return found


def breakers_reset() -> None:
    with _breakers_lock:
        _breakers.clear()
    with _config_lock:
        _config_errors.clear()


# --- configuration errors ---------------------------------------------------------------------------------

_config_errors: dict[str, tuple[float, Failure]] = {}
_config_lock = threading.Lock()


def config_error_report(link: str, failure: Failure) -> None:
    logger.error(
        "model %s refused the request with %s: this is a configuration error (API key, model name, account or "
        "request); remote models are skipped for this answer and users get the extractive answer. %s",
        link,
        failure.reason,
        failure.detail,
    )
    metrics.LLM_CONFIG_ERRORS.labels(link, failure.reason).inc()
    with _config_lock:
        _config_errors[link] = (time.time(), failure)


def model_status() -> dict:
    """For /readyz: breakers and recent configuration errors per link."""
    now = time.time()
    with _config_lock:
        recent = {
            link: {"status": failure.reason, "error": failure.detail, "seconds_ago": round(now - at)}
            for link, (at, failure) in _config_errors.items()
            if now - at <= settings.KB_LLM_CONFIG_ERROR_WINDOW_S
        }
    links = {}
    for link in configured_links():
        entry = {**link_description(link), **breaker(link).snapshot()}
        if link in recent:
            entry["config_error"] = recent[link]
        links[link] = entry
    problems = [f"{link}: configuration error {recent[link]['status']}" for link in recent]
    problems += [f"{link}: circuit {entry['state']}" for link, entry in links.items() if entry["state"] != "closed"]
    status: dict = {"ok": not problems, "links": links}
    if problems:
        status["error"] = "; ".join(problems)
    return status


def configured_links() -> list[str]:
    """Every link of KB_MODELS and of the routes' chains (KB_ROUTES), each once, in order of appearance."""
    chains = [settings.KB_MODELS, *getattr(settings, "KB_ROUTES", {}).values()]
    return list(dict.fromkeys(link for chain in chains for link in chain))


def link_description(link: str) -> dict:
    """What /readyz says a link is: its provider, where it runs (never its key)."""
    if link == "extractive":
        return {"provider": "extractive", "internal": True}
    kind, _, model = link.partition(":")
    if kind == "anthropic":
        return {"provider": "anthropic", "model": model, "internal": False}
    if kind == "openai":
        return {"provider": "openai", "model": model, "internal": False}
    endpoint = settings.KB_ENDPOINTS.get(kind)
    internal = bool(endpoint and endpoint.internal)
    return {"provider": "openai-compatible", "endpoint": kind, "model": model, "internal": internal}
