"""A knowledge admin uploads a document in the browser and watches it become ready, live."""

import re

import pytest
from playwright.sync_api import expect

from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def sign_in(page, base_url, user):
    page.goto(base_url + "/login/")
    page.get_by_label("User name").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_upload_shows_live_progress_until_ready_and_the_passages(
    live_server, page, knowledge_admin, celery_worker, tmp_path
):
    source = tmp_path / "parking-rules.md"
    source.write_text(
        "# Parking Rules\n\n## Visitors\n\nVisitors park on level -1 and register at reception.\n\n"
        "## Bicycles\n\nBicycles go in the covered rack next to the main entrance.\n"
    )
    sign_in(page, live_server.url, knowledge_admin)
    page.goto(live_server.url + "/documents/")
    page.get_by_label("Upload documents").set_input_files(str(source))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("parking-rules.md is queued for processing")

    row = page.get_by_role("row").filter(has_text="parking-rules.md")
    # The rows poll while work is in progress; the status changes without a reload.
    expect(row.locator(".status")).to_have_text("Ready", timeout=90_000)
    expect(row.get_by_role("link")).to_have_text("Parking Rules")

    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/documents/\d+/$"))
    passage = page.locator("article.chunk").filter(has_text="covered rack")
    expect(passage.locator("header")).to_contain_text("Bicycles")

    # The status filter applies when changed, and deleting asks first (both wired in static/js/kb.js: the
    # Content-Security-Policy refuses inline handlers).
    page.goto(live_server.url + "/documents/")
    page.get_by_label("Status").select_option("failed")
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(page.get_by_role("row").filter(has_text="parking-rules.md")).to_have_count(0)
    page.get_by_label("Status").select_option("")
    page.get_by_role("row").filter(has_text="parking-rules.md").get_by_role("link").click()

    questions: list[str] = []

    def answer(dialog, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/documents/\d+/$"))
    assert questions == ["Delete “Parking Rules”? Its passages stop answering at once."]
    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("“Parking Rules” (version 1) was deleted.")
