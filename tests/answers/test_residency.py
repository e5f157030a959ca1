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
    assert exchange.routing["chain"] == exchange.chain == [SELFHOSTED_LINK, EXTRACTIVE]
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


def test_a_follow_up_to_a_cached_answer_that_quotes_a_marked_document_stays_internal(
    fake_anthropic, fake_openai, corpus, hr_employee
):
    corpus.leave.internal_models_only = True
    corpus.leave.save()
    services.ask(LEAVE_QUESTION, hr_employee)
    cached = services.ask(LEAVE_QUESTION, hr_employee)  # a new conversation, answered from the cache
    assert cached["cached"] and Exchange.objects.get(pk=cached["exchange_id"]).routing in ({}, None)
    follow_up = services.ask(
        "And the hotel limit in Amsterdam?", hr_employee, conversation_id=cached["conversation_id"]
    )
    assert follow_up["model"] == SELFHOSTED_LINK
    assert outside_requests(fake_anthropic, fake_openai) == []


def test_an_earlier_answer_that_cites_a_marked_document_restricts_the_conversation(corpus, hr_employee):
    """Whatever recorded the earlier turn (a cache hit records no route) and whenever the document was marked,
    an answer in the history that cites it keeps the conversation's next turns internal."""
    from kb.answers.models import Conversation
    from kb.answers.pipeline.route import _conversation_restricted
    from kb.answers.pipeline.types import Opened, Turn

    conversation = Conversation.objects.create(user=hr_employee)
    earlier = Exchange.objects.create(
        conversation=conversation,
        user=hr_employee,
        question=LEAVE_QUESTION,
        answer=f"Parents get {LEAVE_TEXT} [1].",
        citations=[{"n": 1, "document_id": corpus.leave.pk}],
    )
    now = Exchange.objects.create(conversation=conversation, user=hr_employee, question="And the hotel limit?")
    opened = Opened(now.pk, conversation.pk, (Turn(earlier.question, earlier.answer, ""),))
    assert not _conversation_restricted(opened)
    corpus.leave.internal_models_only = True
    corpus.leave.save()
    assert _conversation_restricted(opened)
    assert not _conversation_restricted(Opened(now.pk, conversation.pk, ()))


def test_new_versions_and_attachments_keep_the_mark(corpus, knowledge_admin):
    from django.core.files.base import ContentFile

    from ingest.services import document_upload, documents_set_internal_models_only

    documents_set_internal_models_only(document_ids=[corpus.leave.pk], marked=True)
    result = document_upload(
        source=ContentFile(b"Parents get eighteen weeks of paid leave.", name="leave-v2.txt"),
        filename="leave-v2.txt",
        uploaded_by=knowledge_admin,
        replaces=corpus.leave,
    )
    assert result.document.internal_models_only
    attachment = document_upload(
        source=ContentFile(b"Attached: the parental leave form.", name="form.txt"),
        filename="form.txt",
        uploaded_by=knowledge_admin,
        attached_to=result.document,
    ).document
    assert attachment.internal_models_only
    documents_set_internal_models_only(document_ids=[corpus.leave.pk], marked=False)
    attachment.refresh_from_db()
    assert not attachment.internal_models_only  # the mark is lifted on every version and attachment too


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
