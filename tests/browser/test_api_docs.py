"""The API's documentation page renders under the Content-Security-Policy (Swagger UI from static files)."""

import pytest
from playwright.sync_api import expect

from tests.browser.test_documents import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_api_docs_page_lists_the_operations(live_server, page, employee):
    sign_in(page, live_server.url, employee)
    page.goto(live_server.url + "/api/v1/docs")
    expect(page.get_by_role("heading", name="kb API")).to_be_visible()
    expect(page.locator(".opblock-summary-path").filter(has_text="/api/v1/ask").first).to_be_visible()
