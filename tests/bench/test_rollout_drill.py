"""Drill (issue #20): a candidate chain whose model fails 30 % of its calls is rolled out to 10 % of askers under
uvicorn (a process of its own, production settings: KB_ROLLOUT_MIN_SAMPLE 30, significance 0.01, two retries per
link). It must be rolled back automatically within the minimum sample: at the first check with 30 candidate
questions (and 30 of the current configuration's), with no question sent after the rollback answered by it.
Fake Anthropic on 127.0.0.1: the current chain's model always answers, the candidate's fails 30 % of calls (500).
Outcome: var/bench/rollout_drill.json.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from kb.accounts.roles import Role
from kb.accounts.services import api_token_create
from kb.answers.models import Exchange
from kb.ops import config, services
from kb.ops.models import Rollout, RolloutState
from tests.conftest import FALLBACK, PRIMARY
from tests.factories import UserFactory
from tests.fake_anthropic import FakeAnthropic, Reply, quoting_responder

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

OUT = Path(settings.BASE_DIR) / "var" / "bench" / "rollout_drill.json"
FAILURE_RATE = 0.30
SHARE = 10
QUESTIONS = [
    "What is the hotel limit per night in Amsterdam?",
    "How long must passwords be?",
    "Who approves flights?",
    "When do I connect to the VPN?",
    "Where should hotels be booked?",
]


class Flaky:
    """The candidate's model fails FAILURE_RATE of its calls, drawn with a fixed seed."""

    def __init__(self) -> None:
        self.draw = random.Random(20)
        self.lock = threading.Lock()
        self.calls = {"ok": 0, "failed": 0}

    def __call__(self, body: dict) -> Reply:
        if body.get("model") == FALLBACK.split(":", 1)[1]:
            with self.lock:
                failed = self.draw.random() < FAILURE_RATE
                self.calls["failed" if failed else "ok"] += 1
            if failed:
                return Reply(status=500)
        return quoting_responder(body)


def test_drill_a_flaky_candidate_model_is_rolled_back_within_the_minimum_sample(asgi_server, corpus):
    config.forget()
    flaky = Flaky()
    with FakeAnthropic(default=flaky) as fake:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-drill",
            "ANTHROPIC_BASE_URL": fake.url,
            "KB_MODELS": f"{PRIMARY},extractive",
            "KB_ANSWER_CACHE_TTL_S": "0",
            "KB_SEMANTIC_CACHE_MIN_SIMILARITY": "1.0",
            "KB_RATE_LIMIT_PER_MINUTE": "0",
            "KB_USER_ASKS_IN_FLIGHT": "0",
            "KB_LLM_BACKOFF_BASE_S": "0.01",
            "KB_LLM_BACKOFF_MAX_S": "0.05",
        }
        with pytest.MonkeyPatch.context() as patch:  # this process stores the configurations: same chain checks
            patch.setattr(settings, "ANTHROPIC_API_KEY", "sk-ant-drill")
            patch.setattr(settings, "KB_MODELS", [PRIMARY, "extractive"])
            candidate = services.configuration_create(
                name="flaky model", prompt_version=settings.KB_PROMPT_VERSION, models=[FALLBACK, "extractive"]
            )
            rollout = services.rollout_create(candidate=candidate)
        # The shadow evaluation is tested on its own (tests/ops/test_rollout.py); a 30 % failing model with two
        # retries answers nearly every golden question, so it passes there, which is why this drill exists.
        services.rollout_evaluation_record(rollout=rollout, evaluation={"sets": [], "failures": []}, passed=True)
        server = asgi_server(**env)
        users = [UserFactory(roles=[Role.EMPLOYEE]) for _ in range(200)]
        services.rollout_start(rollout=rollout, share=SHARE)
        started = time.monotonic()
        tokens = [api_token_create(user=user)[1] for user in users]
        sent: list[tuple[float, int]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def ask(worker: int) -> None:
            n = worker
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    at = time.monotonic()
                    response = client.post(
                        server.url + "/api/v1/ask",
                        json={"question": QUESTIONS[n % len(QUESTIONS)]},
                        headers={"Authorization": f"Bearer {tokens[n % len(tokens)]}"},
                    )
                    n += 3
                    if response.status_code == 200:
                        with lock:
                            sent.append((at, response.json()["exchange_id"]))

        threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 900
        while Rollout.objects.get(pk=rollout.pk).state == RolloutState.ROLLING and time.monotonic() < deadline:
            time.sleep(0.2)
        rolled_back_seen = time.monotonic()
        time.sleep(5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.stop()

    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ROLLED_BACK, "not rolled back within 15 minutes"
    figures = rollout.figures
    after = [pk for at, pk in sent if at > rolled_back_seen]
    late = Exchange.objects.filter(pk__in=after, configuration=candidate).count()
    check_started = time.perf_counter()
    services.rollout_figures(rollout=rollout)
    check_ms = (time.perf_counter() - check_started) * 1000
    # What every question pays for rollbacks to reach it at once: reading the deployment's stamp.
    reads = []
    for _ in range(500):
        read_started = time.perf_counter()
        config.snapshot()
        reads.append((time.perf_counter() - read_started) * 1000)
    reads.sort()
    result = {
        "drill": "flaky_candidate_rolled_back",
        "failure_rate": FAILURE_RATE,
        "share_percent": SHARE,
        "min_sample": settings.KB_ROLLOUT_MIN_SAMPLE,
        "significance": settings.KB_ROLLOUT_SIGNIFICANCE,
        "candidate_questions_at_rollback": figures["candidate"]["questions"],
        "baseline_questions_at_rollback": figures["baseline"]["questions"],
        "candidate_error_rate": figures["candidate"]["error_rate"],
        "baseline_error_rate": figures["baseline"]["error_rate"],
        "candidate_fallback_rate": figures["candidate"]["fallback_rate"],
        "reason": rollout.reason,
        "seconds_to_rollback": round((rollout.finished_at - rollout.started_at).total_seconds(), 1),
        "asks_total": len(sent),
        "asks_after_rollback": len(after),
        "asks_after_rollback_on_candidate": late,
        "candidate_model_calls": flaky.calls,
        "figures_query_ms": round(check_ms, 1),
        "state_read_ms_p50": round(reads[len(reads) // 2], 3),
        "state_read_ms_p95": round(reads[int(len(reads) * 0.95)], 3),
        "wall_s": round(rolled_back_seen - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert figures["candidate"]["questions"] <= settings.KB_ROLLOUT_MIN_SAMPLE + 3  # checked after each answer
    assert figures["candidate"]["questions"] >= settings.KB_ROLLOUT_MIN_SAMPLE
    assert "error_rate" in rollout.reason
    assert after and late == 0
