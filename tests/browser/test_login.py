import re

import pytest
from playwright.sync_api import expect

from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_employee_signs_in_sees_their_menu_and_signs_out(live_server, page, employee):
    page.goto(live_server.url + "/documents/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/documents/"))

    page.get_by_label("User name").fill(employee.username)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("do not match")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # An employee may not open /documents/: the next page is the styled 403.
    expect(page.get_by_role("heading", level=1)).to_have_text("You do not have access to this page")
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ask the knowledge base")  # the employee's home
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_count(1)
    expect(nav.get_by_role("link", name="Ask")).to_be_visible()
    assert page.evaluate("typeof htmx") == "object"  # htmx from the npm package is served

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login/$"))
