"""`manage.py topics`: load the shipped topics once, list them, retrain them."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from kb.guard.models import Topic

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_topics_left_behind():
    from kb.guard.services import forget_matcher

    forget_matcher()
    yield
    forget_matcher()


def _run(*args: str) -> str:
    out = StringIO()
    call_command("topics", *args, stdout=out)
    return out.getvalue()


def test_listing_with_no_topics_says_how_to_load_them():
    assert "manage.py topics load-defaults" in _run("list")


def test_the_shipped_topics_load_once_and_retrain():
    assert "loaded: Legal advice about an individual case, Medical advice" in _run("load-defaults")
    assert "none (they exist already)" in _run("load-defaults")
    Topic.objects.update(weight=None, trained_for="")
    listing = _run("train")
    assert "trained 4 active topic(s)" in listing and "Investment advice\tactive\trefuse\t22 examples" in listing
    assert all(topic.weight and topic.trained_for for topic in Topic.objects.all())
