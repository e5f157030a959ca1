"""While the database is away: clear 503s instead of 500s, and a written answer waits to be recorded.

The outage itself is rehearsed for real (PostgreSQL stopped under uvicorn) in tests/bench/test_drills.py; here
the same error PostgreSQL raises is injected at one point, to pin each branch quickly.
"""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError
from django.test import RequestFactory
from psycopg_pool import PoolTimeout

from kb import unavailable
from kb.accounts.services import api_token_create
from kb.answers import pipeline, services
from kb.answers.models import Exchange, Outcome
from kb.answers.pipeline import record
from kb.answers.pipeline.types import AskRequest
from kb.audit.models import AuditEvent
from tests.answers.test_ask import _events

SHUTDOWN = "terminating connection due to administrator command"


def shutdown() -> OperationalError:
    """What Django raises when PostgreSQL shuts a connection down (psycopg's AdminShutdown, SQLSTATE 57P01)."""
    error = OperationalError(SHUTDOWN)
    error.__cause__ = psycopg.errors.AdminShutdown(SHUTDOWN)
    return error


def test_a_lost_database_connection_is_a_503_with_what_to_do_and_anything_else_a_500():
    factory = RequestFactory()
    for path, kind in (("/api/v1/ask", "application/json"), ("/documents/", "text/html")):
        try:
            raise shutdown()
        except OperationalError:
            response = unavailable.server_error(factory.get(path))
        assert response.status_code == 503 and response["Retry-After"] == "10"
        assert response["Content-Type"].startswith(kind)
        assert "not reachable just now" in response.content.decode() and "Try again" in response.content.decode()
    for error in (
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),  # slow, not down
        psycopg.errors.DeadlockDetected("deadlock detected"),
    ):
        try:
            raise OperationalError(str(error)) from error
        except OperationalError:
            assert unavailable.server_error(factory.get("/api/v1/ask")).status_code == 500
    try:
        raise PoolTimeout("couldn't get a connection after 30.00 sec")
    except PoolTimeout:
        busy = unavailable.server_error(factory.get("/api/v1/ask"))
    assert busy.status_code == 503 and "could not get a database connection in time" in busy.content.decode()
    try:
        try:
            raise shutdown()
        except OperationalError:
            raise ValueError("a bug in a handler") from None  # the outage is not this error's cause
    except ValueError:
        assert unavailable.server_error(factory.get("/api/v1/ask")).status_code == 500
    try:
        raise ValueError("a bug")
    except ValueError:
        assert unavailable.server_error(factory.get("/api/v1/ask")).status_code == 500
        page = unavailable.server_error(factory.get("/"))
    assert page.status_code == 500 and "Something went wrong" in page.content.decode()


@pytest.mark.django_db
def test_without_a_database_an_ask_starts_nothing_and_says_so(fake_anthropic, corpus, employee, monkeypatch, client):
    def database_gone(*args, **kwargs):
        raise shutdown()

    monkeypatch.setattr(pipeline, "begin", database_gone)
    events = _events("What is the hotel limit per night in Amsterdam?", employee)
    assert [event["type"] for event in events] == ["error"]
    assert events[0]["status"] == 503 and "not reachable" in events[0]["message"]
    assert not fake_anthropic.requests and not Exchange.objects.exists()

    _, token = api_token_create(user=employee)
    response = client.post(
        "/api/v1/ask",
        {"question": "What is the hotel limit per night in Amsterdam?"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 503 and response["Retry-After"] == "10"
    assert "not reachable" in response.json()["detail"]


@pytest.mark.django_db
def test_a_written_answer_waits_for_the_database_to_come_back_to_be_recorded(
    fake_anthropic, corpus, employee, monkeypatch, settings
):
    settings.KB_RECORD_RETRY_S = 5
    real_finish = record.finish
    failures = []

    def finish_after_two_failures(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise shutdown()
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(record, "finish", finish_after_two_failures)
    events = _events("What is the hotel limit per night in Amsterdam?", employee)
    assert events[-1]["type"] == "done" and len(failures) == 2
    exchange = Exchange.objects.get(pk=events[-1]["result"]["exchange_id"])
    assert exchange.outcome == Outcome.ANSWERED and "180" in exchange.answer
    assert AuditEvent.objects.filter(kind="exchange").count() == 1


@pytest.mark.django_db
def test_recording_gives_up_after_its_deadline_leaving_the_exchange_pending(
    fake_anthropic, corpus, employee, monkeypatch, settings
):
    settings.KB_RECORD_RETRY_S = 0.6

    def never(*args, **kwargs):
        raise shutdown()

    monkeypatch.setattr(record, "finish", never)
    with pytest.raises(OperationalError):
        _events("What is the hotel limit per night in Amsterdam?", employee)
    assert Exchange.objects.get().outcome == Outcome.PENDING  # started, never finished: visible as such


@pytest.mark.django_db
def test_an_exchange_its_process_never_finished_is_closed_as_failed_with_its_audit_event(corpus, employee):
    from datetime import timedelta

    from django.utils import timezone

    abandoned = pipeline.begin(AskRequest(employee, "What is the hotel limit per night in Amsterdam?")).opened
    recent = pipeline.begin(AskRequest(employee, "How long must a password be?")).opened
    Exchange.objects.filter(pk=abandoned.exchange_id).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.exchanges_close_abandoned() == 1
    closed = Exchange.objects.get(pk=abandoned.exchange_id)
    assert closed.outcome == Outcome.FAILED and closed.error.startswith("interrupted") and closed.finished_at
    (event,) = AuditEvent.objects.filter(kind="exchange")
    assert event.data["exchange_id"] == closed.pk and event.data["outcome"] == Outcome.FAILED
    assert Exchange.objects.get(pk=recent.exchange_id).outcome == Outcome.PENDING  # may still be answering
    assert services.exchanges_close_abandoned() == 0  # once only


@pytest.mark.django_db
def test_a_record_retried_after_a_commit_it_did_not_hear_of_is_written_once(
    fake_anthropic, corpus, employee, monkeypatch, settings
):
    """The database commits the finished exchange, then the connection drops before the acknowledgement:
    the retry must not record it (or its audit event) a second time."""
    settings.KB_RECORD_RETRY_S = 5
    real_finish = record.finish
    calls = []

    def commit_then_lose_the_connection(*args, **kwargs):
        calls.append(1)
        result = real_finish(*args, **kwargs)
        if len(calls) == 1:
            raise shutdown()
        return result

    monkeypatch.setattr(record, "finish", commit_then_lose_the_connection)
    events = _events("What is the hotel limit per night in Amsterdam?", employee)
    assert events[-1]["type"] == "done" and len(calls) == 2
    assert Exchange.objects.get().outcome == Outcome.ANSWERED
    assert AuditEvent.objects.filter(kind="exchange").count() == 1
