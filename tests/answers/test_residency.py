"""Data that may not leave (issue #19): passages of a document marked "internal models only" (itself or through an
access group) reach only links on the company's own infrastructure, whatever the chain says; with none able to
answer, the answer is extractive with a notice. End to end through the ask path, with both fake model servers:
each test inspects every request they received."""

from __future__ import annotations

import pytest

from kb.answers import services
from kb.answers.models import Exchange
from kb.answers.pipeline.route import RESIDENCY_NOTICE
from kb.audit.models import AuditEvent
from kb.llm.providers import EXTRACTIVE
from tests.conftest import OPENAI_LINK, PRIMARY, SELFHOSTED_LINK
from tests.fake_openai import Reply

LEAVE_QUESTION = "How many weeks of paid parental leave does a parent get?"
LEAVE_TEXT = "sixteen weeks of paid parental leave"


@pytest.fixture(autouse=True)
def both_providers(fake_anthropic, fake_openai, settings):
    settings.KB_MODELS = [PRIMARY, OPENAI_LINK, SELFHOSTED_LINK, EXTRACTIVE]
    settings.KB_ROUTES = {}


def outside_requests(fake_anthropic, fake_openai) -> list[str]:
    """What every link outside the company received: Anthropic's requests, and the fake OpenAI server's
    requests for the `openai:` model (the `selfhosted` endpoint is the same server, another model name)."""
    return [str(r.body) for r in fake_anthropic.requests] + [
        r.text for r in fake_openai.requests if r.model == OPENAI_LINK.partition(":")[2]
    ]


def test_a_group_marked_internal_only_sends_its_passages_to_internal_links_only(
    fake_anthropic, fake_openai, corpus, hr_employee
):
    corpus.hr.internal_models_only = True
    corpus.hr.save()
    result = services.ask(LEAVE_QUESTION, hr_employee)
    assert result["model"] == SELFHOSTED_LINK and not result["refused"]
    assert outside_requests(fake_anthropic, fake_openai) == []
    assert [r.model for r in fake_openai.requests] == ["llama-3.1-8b-instruct"]
    assert LEAVE_TEXT in fake_openai.requests[0].text  # the internal model did get the passage
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    assert exchange.routing["residency"] is True
    assert exchange.routing["restricted_documents"] == [corpus.leave.pk]
    assert exchange.routing["withheld"] == [PRIMARY, OPENAI_LINK]
    assert exchange.routing["chain"] == [SELFHOSTED_LINK, EXTRACTIVE]
    event = AuditEvent.objects.filter(kind="exchange").latest("pk")
    assert event.data["routing"]["residency"] is True


def test_questions_without_restricted_passages_take_the_whole_chain(fake_anthropic, fake_openai, corpus, employee):
    corpus.hr.internal_models_only = True
    corpus.hr.save()
    result = services.ask("What is the hotel limit per night in Amsterdam?", employee)  # reads no HR document
    assert result["model"] == PRIMARY
    assert Exchange.objects.get(pk=result["exchange_id"]).routing["residency"] is False


def test_with_no_internal_link_the_answer_is_extractive_with_a_notice(
    fake_anthropic, fake_openai, corpus, hr_employee, settings
):
    settings.KB_MODELS = [PRIMARY, OPENAI_LINK, EXTRACTIVE]
    corpus.leave.internal_models_only = True  # the document itself, not its group
    corpus.leave.save()
    result = services.ask(LEAVE_QUESTION, hr_employee)
    assert result["model"] == EXTRACTIVE and RESIDENCY_NOTICE in result["notices"]
    assert fake_anthropic.requests == [] and fake_openai.requests == []


def test_residency_is_never_traded_for_availability(fake_anthropic, fake_openai, corpus, hr_employee):
    # The internal server is down; the outside models are healthy and are still not asked.
    fake_openai.default = lambda body: Reply(status=503)
    corpus.leave.internal_models_only = True
    corpus.leave.save()
    result = services.ask(LEAVE_QUESTION, hr_employee)
    assert result["model"] == EXTRACTIVE and result["fallback_used"]
    assert outside_requests(fake_anthropic, fake_openai) == []
    assert {r.model for r in fake_openai.requests} == {"llama-3.1-8b-instruct"}
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    assert exchange.routing["residency"] and exchange.model == EXTRACTIVE


def test_a_follow_up_in_a_conversation_under_the_rule_stays_internal(fake_anthropic, fake_openai, corpus, hr_employee):
    corpus.leave.internal_models_only = True
    corpus.leave.save()
    first = services.ask(LEAVE_QUESTION, hr_employee)
    assert first["model"] == SELFHOSTED_LINK
    corpus.leave.internal_models_only = False  # even if its passages were not given again: the history quotes it
    corpus.leave.save()
    second = services.ask("And the hotel limit in Amsterdam?", hr_employee, conversation_id=first["conversation_id"])
    assert second["model"] == SELFHOSTED_LINK
    assert outside_requests(fake_anthropic, fake_openai) == []


def test_the_command_marks_documents_and_groups_and_audits_it(corpus):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("internal_models_only", "--document", str(corpus.travel.pk), "--group", "HR", stdout=out)
    corpus.travel.refresh_from_db()
    corpus.hr.refresh_from_db()
    assert corpus.travel.internal_models_only and corpus.hr.internal_models_only
    assert "internal models only" in out.getvalue()
    event = AuditEvent.objects.filter(kind="access_groups").latest("pk")
    assert event.data == {"internal_models_only": True, "documents": [corpus.travel.pk], "groups": ["HR"]}
    call_command("internal_models_only", "--group", "HR", "--off", stdout=out)
    corpus.hr.refresh_from_db()
    assert not corpus.hr.internal_models_only
