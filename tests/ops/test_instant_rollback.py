"""Instant rollback across processes: two uvicorn servers (real processes of their own, as in production) share
the test database; while askers keep asking both, a rollout at 100 % is rolled back from a third process (this
one). No question sent after the rollback returned is answered by the rolled-back configuration, on either
server, and neither server was restarted."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from kb.accounts.roles import Role
from kb.accounts.services import api_token_create
from kb.answers.models import Exchange
from kb.ops import services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the hotel limit per night in Amsterdam?"
SERVER_ENV = {
    "KB_MODELS": "extractive",
    "KB_ANSWER_CACHE_TTL_S": "0",
    "KB_SEMANTIC_CACHE_MIN_SIMILARITY": "1.0",
    "KB_RATE_LIMIT_PER_MINUTE": "0",
    "KB_USER_ASKS_IN_FLIGHT": "0",
}


class Asker(threading.Thread):
    """Asks one server again and again; keeps (sent at, exchange id) of each answer."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.answers: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                response = client.post(self.url + "/api/v1/ask", json={"question": QUESTION},
                                       headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
                if response.status_code == 200:
                    self.answers.append((sent, response.json()["exchange_id"]))
                else:
                    self.errors.append(f"{response.status_code} {response.text[:200]}")


def test_after_the_rollback_no_new_exchange_uses_the_rolled_back_configuration(asgi_server, corpus):
    candidate = services.configuration_create(name="prompt v1", prompt_version="answer-v1", models=["extractive"])
    rollout = services.rollout_create(candidate=candidate)
    # The shadow evaluation has its own tests (test_rollout.py); here a passing one is recorded as it would be.
    services.rollout_evaluation_record(rollout=rollout, evaluation={"sets": [], "failures": []}, passed=True)
    services.rollout_start(rollout=rollout, share=100)
    servers = [asgi_server(**SERVER_ENV), asgi_server(**SERVER_ENV)]
    askers = [Asker(server.url, api_token_create(user=UserFactory(roles=[Role.EMPLOYEE]))[1])
              for server in servers for _ in range(2)]  # fmt: skip
    for asker in askers:
        asker.start()
    time.sleep(4)
    services.rollout_rollback(rollout=rollout, reason="instant rollback drill")
    rolled_back_at = time.monotonic()
    time.sleep(4)
    for asker in askers:
        asker.stop.set()
    for asker in askers:
        asker.join(timeout=60)

    assert not [error for asker in askers for error in asker.errors]
    baseline = rollout.baseline_id
    for server_askers in (askers[:2], askers[2:]):
        before = [pk for asker in server_askers for sent, pk in asker.answers if sent < rolled_back_at - 1]
        after = [pk for asker in server_askers for sent, pk in asker.answers if sent > rolled_back_at]
        assert before and after
        assert set(Exchange.objects.filter(pk__in=before).values_list("configuration_id", flat=True)) == {candidate.pk}
        assert set(Exchange.objects.filter(pk__in=after).values_list("configuration_id", flat=True)) == {baseline}
    assert all(server.process.poll() is None for server in servers)  # the same processes, not restarted
