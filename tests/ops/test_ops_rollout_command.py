"""manage.py ops_rollout: the same services as the Operations page, from the command line."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from kb.answers import services as answers
from kb.ops import config
from kb.ops.models import Rollout, RolloutState

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ops_rollout", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_configure_evaluate_start_promote_from_the_command_line(settings, corpus, employee):
    settings.KB_MODELS = ["extractive"]
    settings.KB_ROLLOUT_EVAL_LIMIT = 3
    assert "stored" in run("configure", "v1", "--prompt", "answer-v1", "--models", "extractive")
    with pytest.raises(CommandError, match="unknown link"):
        run("configure", "bad", "--prompt", "answer-v1", "--models", "nowhere")
    assert "created" in run("create", "v1")
    rollout = Rollout.objects.get()
    with pytest.raises(CommandError, match="no passing shadow evaluation"):
        run("start", str(rollout.pk), "--share", "5")
    assert "passed" in run("evaluate", str(rollout.pk))
    run("start", str(rollout.pk), "--share", "5")
    run("share", str(rollout.pk), "100")
    assert answers.ask("What is the hotel limit per night in Amsterdam?", employee)["configuration"]["name"] == "v1"
    assert "no figure is worse" in run("check")
    run("promote", str(rollout.pk))
    assert Rollout.objects.get().state == RolloutState.PROMOTED and config.snapshot().current.name == "v1"
    listing = run("list")
    assert "current: v1" in listing and "promoted" in listing
    with pytest.raises(CommandError, match="nothing to roll back"):
        run("rollback", str(rollout.pk))


def test_the_audit_page_lists_rollout_events_with_what_happened(settings, client, compliance):
    settings.KB_MODELS = ["extractive"]
    run("configure", "v1", "--prompt", "answer-v1", "--models", "extractive")
    run("create", "v1")
    run("rollback", str(Rollout.objects.get().pk), "--reason", "changed my mind")
    client.force_login(compliance)
    page = client.get("/audit/").content.decode()
    assert "Configuration v1: prompt answer-v1" in page
    assert "of v1 rolled_back (0 %): changed my mind" in page
