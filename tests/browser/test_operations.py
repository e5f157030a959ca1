"""A knowledge admin runs a rollout from the Operations page: stores a configuration, starts its rollout once the
shadow evaluation has passed, raises its share, promotes it; then rolls the next one back with a reason."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.db import connection
from playwright.sync_api import expect

from kb.ops import config, shadow, views
from kb.ops.models import Rollout
from tests.browser.test_documents import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


QUEUED: list[int] = []


@pytest.fixture(autouse=True)
def fresh_state(settings, monkeypatch):
    settings.KB_MODELS = ["extractive"]
    settings.KB_ROLLOUT_EVAL_LIMIT = 3
    config.forget()
    # The test stands in for the worker: what the page queues is recorded, not left on the broker for a later
    # test's worker to run against a database that no longer holds the rollout.
    QUEUED.clear()
    monkeypatch.setattr(views, "tasks", SimpleNamespace(rollout_evaluate=SimpleNamespace(delay=QUEUED.append)))
    yield
    config.forget()


def store_configuration(page, name: str, prompt: str) -> None:
    form = page.locator("#ops-configurations form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Prompt version").select_option(prompt)
    form.get_by_label("Model chain").fill("extractive")
    form.get_by_role("button", name="Store configuration").click()
    expect(page.get_by_text(f"Configuration {name} stored")).to_be_visible()


def _evaluate(rollout_id: int) -> None:
    try:
        shadow.rollout_evaluate(rollout_id=rollout_id)
    finally:
        connection.close()


def roll_out(page, live_server, name: str) -> Rollout:
    page.get_by_label("Roll out").select_option(label=name)
    page.get_by_role("button", name="Evaluate and roll out").click()
    expect(page.locator("#ops-rollout-state")).to_have_text("Evaluating")
    expect(page.locator("#ops-evaluation")).to_contain_text("is running")
    # The worker's job (a Celery task in production), run here on 3 golden questions.
    # (In a thread of its own: Playwright's event loop runs in this one.)
    rollout = Rollout.objects.get(candidate__name=name)
    assert QUEUED[-1] == rollout.pk  # the page queued this rollout's evaluation
    worker = threading.Thread(target=_evaluate, args=(rollout.pk,))
    worker.start()
    worker.join(timeout=300)
    page.goto(live_server.url + "/ops/")
    expect(page.locator("#ops-evaluation")).to_contain_text("passed")
    return rollout


def test_start_raise_promote_and_roll_back_from_the_operations_page(live_server, page, knowledge_admin):
    sign_in(page, live_server.url, knowledge_admin)
    page.get_by_role("link", name="Operations").click()
    expect(page.get_by_role("heading", name="Operations")).to_be_visible()
    expect(page.locator("#ops-current-name")).to_have_text("environment")

    store_configuration(page, "prompt v1", "answer-v1")
    roll_out(page, live_server, "prompt v1")
    page.get_by_label("Start at").select_option("10")
    page.get_by_role("button", name="Start rollout").click()
    expect(page.locator("#ops-rollout-state")).to_have_text("Rolling out")
    expect(page.locator("#ops-rollout-share")).to_have_text("10 %")
    expect(page.locator("#ops-figures")).to_contain_text("unsupported_rate")

    page.get_by_label("Share", exact=True).select_option("25")
    page.get_by_role("button", name="Change share").click()
    expect(page.locator("#ops-rollout-share")).to_have_text("25 %")

    page.get_by_role("button", name="Promote to everyone").click()
    expect(page.get_by_text("prompt v1 is now the current configuration")).to_be_visible()
    expect(page.locator("#ops-current-name")).to_have_text("prompt v1")
    expect(page.locator("#ops-history")).to_contain_text("Promoted")
    assert config.snapshot().current.name == "prompt v1"

    store_configuration(page, "prompt v2 again", "answer-v2")
    rollout = roll_out(page, live_server, "prompt v2 again")
    page.get_by_label("Start at").select_option("5")
    page.get_by_role("button", name="Start rollout").click()
    expect(page.locator("#ops-rollout-share")).to_have_text("5 %")
    page.get_by_label("Reason").fill("looked wrong in review")
    page.get_by_role("button", name="Roll back").click()
    expect(page.get_by_text("Rolled back: every next question is answered by prompt v1")).to_be_visible()
    expect(page.locator("#ops-history")).to_contain_text("looked wrong in review")
    rollout.refresh_from_db()
    assert rollout.state == "rolled_back" and rollout.created_by == knowledge_admin
    assert config.snapshot().candidate is None


def test_an_employee_has_no_operations_page(live_server, page, employee):
    sign_in(page, live_server.url, employee)
    expect(page.get_by_role("link", name="Operations")).to_have_count(0)
    response = page.goto(live_server.url + "/ops/")
    assert response.status == 403
