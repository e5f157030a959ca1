"""Nothing of a document a user may not read reaches that user, through any door.

An HR employee works with the HR-only parental-leave policy first - asks about it (filling the answer caches),
follows up, rates the answer. Then an employee outside HR goes through every page and API route that could
carry it - the same and a reworded question (exact and semantic caches), streamed and JSON, the other's
conversation, exchange, citation panel, reading view and feedback, the document list and the document itself,
search, audit pages and exports - and every response, error messages included, is scanned for the policy's
title, file name and text.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from kb.answers import services
from tests.answers.test_api import bearer, post

pytestmark = pytest.mark.django_db

SECRETS = ("Parental leave", "parental-leave", "sixteen weeks", "two months before the leave")


def _body(response) -> str:
    if not response.streaming:
        return response.content.decode(errors="replace")
    content = response.streaming_content
    if hasattr(content, "__aiter__"):

        async def read() -> bytes:
            return b"".join([piece async for piece in content])

        return async_to_sync(read)().decode(errors="replace")
    return b"".join(content).decode(errors="replace")


def _scan(where: str, response) -> None:
    body = _body(response)
    for secret in SECRETS:
        assert secret not in body, f"{secret!r} leaked through {where} ({response.status_code}): {body[:500]}"


def test_an_hr_only_document_leaks_through_no_door(fake_anthropic, corpus, employee, hr_employee, client):
    question = "How many weeks of paid parental leave does a parent receive?"
    hr_answer = services.ask(question, hr_employee)
    assert hr_answer["citations"][0]["document_id"] == corpus.leave.pk and "sixteen weeks" in hr_answer["answer"]
    follow = services.ask("And when do I tell my manager?", hr_employee, conversation_id=hr_answer["conversation_id"])
    services.feedback_give(
        exchange=services.Exchange.objects.get(pk=follow["exchange_id"]), user=hr_employee, rating="up"
    )
    leave, hr_exchange, hr_conversation = corpus.leave.pk, hr_answer["exchange_id"], hr_answer["conversation_id"]

    client.force_login(hr_employee)  # the scan's positive control: the reader does see it
    assert "sixteen weeks" in _body(client.get(f"/exchanges/{hr_exchange}/"))
    assert "Parental leave" in _body(client.get(f"/read/{leave}/"))

    headers = bearer(employee)
    client.force_login(employee)
    for body in (
        {"question": question},  # the exact cache holds the HR answer
        {"question": "how many weeks of paid parental leave does a parent receive"},  # the semantic cache
        {"question": question, "stream": True},
        {"question": "What does the parental leave policy say about telling a manager?"},
        {"question": "And how long is it?", "conversation_id": hr_conversation},
    ):
        response = post(client, body, headers)
        assert response.status_code in (200, 404), response.content
        _scan(f"POST /api/v1/ask {json.dumps(body)}", response)
    outsider = services.ask(question, employee)
    assert not outsider["cached"] and leave not in [c["document_id"] for c in outsider["citations"]]

    for path in (
        "/",
        f"/c/{hr_conversation}/",
        f"/exchanges/{hr_exchange}/",
        f"/exchanges/{hr_exchange}/sources/1",
        f"/read/{leave}/",
        f"/read/{leave}/?chunk=1",
        "/api/v1/documents",
        f"/api/v1/documents/{leave}",
        "/search/?q=parental+leave+weeks",
        "/api/v1/audit/events",
        "/api/v1/audit/export",
        "/audit/",
        "/audit/analytics/",
        f"/documents/{leave}/",
    ):
        response = client.get(path, headers=headers if path.startswith("/api/") else {})
        assert response.status_code in (200, 403, 404), (path, response.status_code)
        _scan(f"GET {path}", response)
    for path, data in (
        (f"/exchanges/{hr_exchange}/feedback", {"rating": "down", "reason": "wrong"}),
        ("/api/v1/feedback", {"exchange_id": hr_exchange, "rating": "down"}),
    ):
        if path.startswith("/api/"):
            response = client.post(path, data=json.dumps(data), content_type="application/json", headers=headers)
        else:
            response = client.post(path, data)
        assert response.status_code in (403, 404), (path, response.status_code)
        _scan(f"POST {path}", response)
