"""Hostile markup in a document and in a model's reply is shown as text in a real browser, never run."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_ask import ask
from tests.browser.test_documents import sign_in
from tests.conftest import PRIMARY
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.search.conftest import ingest_file

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAYLOADS = (
    '<script>window.__xss = "script"</script>'
    "<img src=x onerror=\"window.__xss = 'img'\">"
    "<svg onload=\"window.__xss = 'svg'\"></svg>"
    "[click me](javascript:window.__xss='link')"
)


def test_xss_in_a_document_and_in_a_model_reply_is_inert(asgi_server, page, corpus, employee):
    hostile = ingest_file(
        "# Canteen rules\n\nThe canteen serves lunch from noon until two in the afternoon every weekday. "
        + PAYLOADS
        + "\n",
        "canteen.md",
    )
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    with FakeAnthropic() as fake:
        fake.default = lambda body: Reply(text=f"The canteen serves lunch from noon [1]. {PAYLOADS} [1]")
        server = asgi_server(
            ANTHROPIC_API_KEY="sk-ant-test-key", ANTHROPIC_BASE_URL=fake.url, KB_MODELS=f"{PRIMARY},extractive"
        )
        sign_in(page, server.url, employee)
        ask(page, "When does the canteen serve lunch?")
        answer = page.locator(".exchange .answer").last
        # The first answer of a new server process waits for its models to load: as long as the other ask tests.
        expect(answer.locator("a.cite").first).to_be_visible(timeout=15_000)
        expect(answer).to_contain_text("window.__xss")  # shown as text
        assert answer.locator("script, img, svg, iframe").count() == 0
        for link in answer.locator("a").all():
            assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
        answer.locator("a.cite").first.click()
        panel = page.get_by_role("complementary", name="Cited passage")
        expect(panel).to_contain_text("window.__xss")  # the markdown parser kept the text, dropped the tags
        assert panel.locator("script, img, svg").count() == 0
        page.goto(f"{server.url}/read/{hostile.pk}/")
        expect(page.locator("main")).to_contain_text("window.__xss")
        page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None and dialogs == []
