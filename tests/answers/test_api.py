"""POST /api/v1/ask: JSON and server-sent events, access and input checks."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from kb.accounts.services import api_token_create
from kb.answers.models import Exchange, Outcome
from tests.conftest import FALLBACK, PRIMARY
from tests.factories import UserFactory
from tests.fake_anthropic import FakeAnthropic, Reply, quoting_responder

HOTEL = "What is the hotel limit per night in Amsterdam?"
CONTRACT = {
    "answer", "citations", "refused", "refusal_reason", "model", "cached", "fallback_used", "exchange_id",
    "latency_ms", "usage",
}  # fmt: skip


def bearer(user) -> dict[str, str]:
    _, raw = api_token_create(user=user)
    return {"Authorization": f"Bearer {raw}"}


def post(client, body, headers=None):
    return client.post("/api/v1/ask", data=json.dumps(body), content_type="application/json", headers=headers or {})


def parse_sse(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_it_answers_in_the_contract_shape(client, fake_anthropic, corpus, employee):
    response = post(client, {"question": HOTEL}, bearer(employee))
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) >= CONTRACT
    assert body["citations"][0]["title"] == "Travel policy" and body["model"] == PRIMARY
    assert set(body["citations"][0]) == {"n", "document_id", "title", "heading", "page", "chunk_id", "quote", "passage"}
    assert set(body["usage"]) >= {"input_tokens", "output_tokens", "cost_usd"}
    assert response["Content-Type"].startswith("application/json")


def test_a_session_user_may_ask_with_the_csrf_token(fake_anthropic, corpus, employee):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(employee)
    assert post(client, {"question": HOTEL}).status_code == 403  # no CSRF token
    client.get("/")
    token = client.cookies["csrftoken"].value
    assert post(client, {"question": HOTEL}, {"X-CSRFToken": token}).status_code == 200


def test_a_stream_sends_start_deltas_and_done(fake_anthropic, corpus, employee):
    fake_anthropic.then(Reply(text="Hotels in Amsterdam cost at most 180 euros [1]."))
    headers = bearer(employee)

    async def stream() -> tuple[int, str, str]:
        response = await AsyncClient().post(
            "/api/v1/ask", {"question": HOTEL, "stream": True}, content_type="application/json", headers=headers
        )
        chunks = [chunk async for chunk in response.streaming_content]
        return response.status_code, response["Content-Type"], b"".join(chunks).decode()

    status, content_type, raw = async_to_sync(stream)()
    assert status == 200 and content_type == "text/event-stream"
    events = parse_sse(raw)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    done = events[-1][1]["result"]
    assert text == done["answer"] and set(done) >= CONTRACT
    assert events[0][1]["exchange_id"] == done["exchange_id"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"question": ""}, 400, "Type a question"),
        ({"question": "x" * 5000}, 400, "Your question is 5,000 characters long; the limit is 2,000. Shorten it"),
        ({"question": HOTEL, "conversation_id": 999999}, 404, "conversation"),
        ({"question": 12}, 422, ""),
        ({"nothing": "here"}, 422, ""),
    ],
)
def test_bad_requests_say_what_is_wrong(client, corpus, employee, body, status, message):
    response = post(client, body, bearer(employee))
    assert response.status_code == status
    assert message in json.dumps(response.json())
    assert not Exchange.objects.exists()


def test_malformed_json_is_a_clear_client_error(client, employee):
    response = client.post("/api/v1/ask", data="{not json", content_type="application/json", headers=bearer(employee))
    assert 400 <= response.status_code < 500


def test_anonymous_callers_and_other_roles_may_not_ask(client, corpus, compliance, knowledge_admin):
    assert post(client, {"question": HOTEL}).status_code == 401
    assert post(client, {"question": HOTEL}, bearer(compliance)).status_code == 403
    assert post(client, {"question": HOTEL}, bearer(knowledge_admin)).status_code == 403


def test_the_ask_command_prints_a_cited_answer(corpus, employee, settings, capsys):
    from django.core.management import call_command

    settings.KB_MODELS = ["extractive"]
    call_command("ask", HOTEL, "--user", employee.username)
    out = capsys.readouterr().out
    assert "180 euros" in out and "[1] Travel policy" in out and "model extractive" in out
    call_command("ask", HOTEL, "--user", employee.username, "--json")
    assert json.loads(capsys.readouterr().out)["cached"] is True


@pytest.mark.django_db(transaction=True)
def test_under_uvicorn_the_answer_streams_as_it_is_written(asgi_server, test_database_url, corpus, employee):
    """The production server: text arrives before the model has finished, and the fallback takes over from a
    broken stream without showing the broken text."""
    with FakeAnthropic(default=lambda body: quoting_responder(body)) as fake:
        fake.then(Reply(text="Broken start that must not show [1].", error_after_chunks=2))
        fake.then(
            Reply(
                text="Amsterdam hotels cost up to 180 euros a night [1]. Rotterdam hotels cost up to 150 euros a "
                "night [1]. Book hotels through the travel desk [1].",
                chunk_delay_s=0.08,
            )
        )
        server = asgi_server(
            ANTHROPIC_API_KEY="sk-ant-test-key",
            ANTHROPIC_BASE_URL=fake.url,
            KB_MODELS=f"{PRIMARY},{FALLBACK},extractive",
            KB_LLM_RETRIES="1",
            KB_LLM_BACKOFF_BASE_S="0.01",
        )
        arrivals: list[tuple[float, str, dict]] = []
        started = time.monotonic()
        with httpx.stream(
            "POST",
            server.url + "/api/v1/ask",
            json={"question": HOTEL, "stream": True},
            headers=bearer(employee),
            timeout=30,
        ) as response:
            assert response.status_code == 200, response.read()
            buffer = ""
            for piece in response.iter_text():
                buffer += piece
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    ((kind, data),) = parse_sse(block)
                    arrivals.append((time.monotonic() - started, kind, data))
    kinds = [kind for _, kind, _ in arrivals]
    assert kinds[0] == "start" and kinds[-1] == "done" and "reset" in kinds
    deltas = [at for at, kind, _ in arrivals if kind == "delta"]
    assert arrivals[-1][0] - deltas[-3] >= 0.2, "deltas arrived over time, not all at the end"
    shown = ""
    for _, kind, data in arrivals:
        shown = "" if kind == "reset" else shown + data.get("text", "") if kind == "delta" else shown
    done = arrivals[-1][2]["result"]
    assert "Broken" not in shown and shown == done["answer"]
    exchange = Exchange.objects.get(pk=done["exchange_id"])
    assert exchange.outcome == Outcome.ANSWERED and exchange.attempts[0]["partial_chars"] > 0


@pytest.mark.django_db(transaction=True)
def test_under_uvicorn_a_client_that_disconnects_leaves_a_cancelled_exchange(asgi_server, corpus):
    user = UserFactory(roles=["Employee"])
    with FakeAnthropic(default=lambda body: Reply(text="slow " * 40 + "[1]", chunk_delay_s=0.1)) as fake:
        server = asgi_server(ANTHROPIC_API_KEY="sk-ant-test-key", ANTHROPIC_BASE_URL=fake.url, KB_MODELS=PRIMARY)
        with httpx.stream(
            "POST",
            server.url + "/api/v1/ask",
            json={"question": HOTEL, "stream": True},
            headers=bearer(user),
            timeout=30,
        ) as response:
            for piece in response.iter_text():
                if "event: delta" in piece:
                    break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            exchange = Exchange.objects.get()
            if exchange.outcome != Outcome.PENDING:
                break
            time.sleep(0.1)
    assert exchange.outcome == Outcome.CANCELLED, server.output()[-3000:]
