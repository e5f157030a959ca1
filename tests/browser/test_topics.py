"""A knowledge admin loads the shipped off-limits topics and words one topic's message on the Topics page; an
employee who asks a question on it reads that message with one badge, and no model is called. The app runs under
uvicorn against the fake Anthropic server."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import expect

from kb.answers.models import Exchange
from kb.guard.topics import OFF_LIMITS
from tests.browser.test_ask import ask
from tests.browser.test_documents import sign_in
from tests.conftest import PRIMARY
from tests.fake_anthropic import FakeAnthropic, quoting_responder

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOT = Path(settings.BASE_DIR) / "var" / "screenshots" / "topics.png"
MESSAGE = "kb does not give investment advice; the pension desk explains the company plans."


@pytest.fixture
def app(asgi_server):
    with FakeAnthropic(default=lambda body: quoting_responder(body)) as fake:
        server = asgi_server(
            ANTHROPIC_API_KEY="sk-ant-test-key", ANTHROPIC_BASE_URL=fake.url, KB_MODELS=f"{PRIMARY},extractive"
        )
        server.fake = fake
        yield server


def test_an_off_limits_question_is_answered_with_the_configured_response(app, page, knowledge_admin, employee):
    sign_in(page, app.url, knowledge_admin)
    page.get_by_role("link", name="Topics").click()
    expect(page.get_by_role("heading", name="Off-limits topics")).to_be_visible()
    # Saving trains the topics' classifiers (a few seconds on 2 busy cores).
    page.get_by_role("button", name="Load the four shipped topics").click(timeout=90_000)
    expect(page.get_by_role("link", name="Investment advice")).to_be_visible(timeout=30_000)
    page.get_by_role("link", name="Investment advice").click()
    page.get_by_label("Message shown instead of an answer").fill(MESSAGE)
    page.get_by_role("button", name="Save").click(timeout=90_000)
    expect(page.get_by_text("“Investment advice” is saved.")).to_be_visible(timeout=30_000)

    page.context.clear_cookies()
    sign_in(page, app.url, employee)
    ask(page, "i've got 15k saved up, should I put it in bitcoin or an index fund?")
    exchange = page.locator(".exchange").last
    expect(exchange.locator(".answer")).to_contain_text(MESSAGE, timeout=20_000)
    expect(exchange.locator(".badge")).to_have_text(["Off-limits topic: not answered by kb"])
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    recorded = Exchange.objects.get()
    assert recorded.refusal_reason == OFF_LIMITS and recorded.answer == MESSAGE
    assert app.fake.requests == []
