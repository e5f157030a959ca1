"""A compliance officer verifies the audit log from the compliance page: the result replaces the panel when the
worker has checked every event, with no reload."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_documents import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_verify_now_shows_the_result_in_place(live_server, page, compliance, celery_worker):
    from kb.audit.services import audit_record

    for n in range(3):
        audit_record(kind="feedback", actor=compliance, data={"n": n})
    sign_in(page, live_server.url, compliance)
    page.goto(live_server.url + "/audit/")
    panel = page.locator("#audit-verification")
    expect(panel).to_contain_text("Not verified yet")
    page.evaluate("window.kbNoReload = true")  # gone if the page is loaded again
    page.get_by_role("button", name="Verify now").click()
    expect(panel).to_contain_text("Verifying")
    # The worker's verdict on this log depends on its own witness folder; what matters here is that the
    # verdict arrives in the panel by itself.
    expect(panel.locator(".status").first).to_have_text(re.compile("Intact|Broken"), timeout=60000)
    assert page.evaluate("window.kbNoReload") is True and page.url == live_server.url + "/audit/"
