import random

import pytest

from kb.llm import resilience
from kb.llm.resilience import Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_probes_once_after_the_cooldown():
    clock = Clock()
    breaker = Breaker("x", failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == State.CLOSED
    breaker.failure()
    assert breaker.state == State.OPEN and not breaker.allow()
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow(), "the first caller after the cooldown probes"
    assert breaker.state == State.HALF_OPEN and not breaker.allow(), "only one probe at a time"
    breaker.success()
    assert breaker.state == State.CLOSED and breaker.allow()


def test_a_failed_probe_opens_the_breaker_for_another_cooldown():
    clock = Clock()
    breaker = Breaker("x", failures=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now = 5
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == State.OPEN
    clock.now = 9
    assert not breaker.allow()
    assert breaker.snapshot()["retry_in_s"] == 1.0


def test_a_success_resets_the_count_and_a_cancelled_probe_lets_another_caller_probe():
    clock = Clock()
    breaker = Breaker("x", failures=2, cooldown_s=1, clock=clock)
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == State.CLOSED
    breaker.failure()
    clock.now = 1
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_backoff_is_jittered_below_an_exponential_ceiling(settings):
    settings.KB_LLM_BACKOFF_BASE_S = 0.5
    settings.KB_LLM_BACKOFF_MAX_S = 3.0
    rng = random.Random(1)
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):
        waits = [resilience.backoff_s(retry, rng=rng) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.8 and min(waits) < ceiling * 0.2, "spread over the whole range"


def test_backoff_honours_retry_after_up_to_a_limit(settings):
    settings.KB_LLM_BACKOFF_BASE_S = 0.1
    settings.KB_LLM_RETRY_AFTER_MAX_S = 5.0
    assert resilience.backoff_s(1, 2.0) >= 2.0
    assert resilience.backoff_s(1, 5.0) >= 5.0
    assert resilience.backoff_s(1, 5.1) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "config"),
        (401, "config"),
        (403, "config"),
        (404, "config"),
        (408, "transient"),
        (409, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (529, "transient"),
    ],
)
def test_statuses_are_classified(status, kind):
    import anthropic
    import httpx2

    response = httpx2.Response(
        status, request=httpx2.Request("POST", "http://x/v1/messages"), headers={"retry-after": "2"}
    )
    error = anthropic.APIStatusError("boom", response=response, body={"error": {"type": "t", "message": "m"}})
    failure = resilience.classify(error)
    assert failure.kind.value == kind and failure.status == status
    if kind == "transient":
        assert failure.retry_after_s == 2.0
