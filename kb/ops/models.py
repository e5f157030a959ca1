"""Answer configurations (prompt version + model chain + routes) as data, and their staged rollouts.

A configuration never changes once written: a change is a new configuration, rolled out like any other, so that
every exchange's `configuration` says exactly what answered it. `Deployment` (one row) names the current
configuration and carries a stamp that every change renews: the ask path reads the stamp on every question and
reloads the rest only when it changed, so a promotion or rollback reaches every web process at once.
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import models


class AnswerConfiguration(models.Model):
    name = models.CharField(max_length=100, unique=True)
    prompt_version = models.CharField(max_length=100)
    chain = models.JSONField(help_text="The model chain, as KB_MODELS: links in order, extractive last")
    routes = models.JSONField(default=dict, blank=True, help_text="Tier -> chain, as KB_ROUTES; empty: no routing")
    fingerprint = models.CharField(max_length=64, db_index=True, help_text="sha256 of prompt, chain and routes")
    from_environment = models.BooleanField(default=False, help_text="Taken from KB_PROMPT_VERSION/KB_MODELS/KB_ROUTES")
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def fingerprint_of(prompt_version: str, chain: list[str], routes: dict[str, list[str]]) -> str:
        material = json.dumps([prompt_version, list(chain), {k: list(v) for k, v in sorted(routes.items())}])
        return hashlib.sha256(material.encode()).hexdigest()

    def as_dict(self) -> dict:
        return {
            "id": self.pk,
            "name": self.name,
            "prompt_version": self.prompt_version,
            "chain": list(self.chain),
            "routes": dict(self.routes),
        }


class RolloutState(models.TextChoices):
    EVALUATING = "evaluating", "Evaluating"  # created; the shadow evaluation is to run or has run
    REJECTED = "rejected", "Rejected by the evaluation"
    ROLLING = "rolling", "Rolling out"
    ROLLED_BACK = "rolled_back", "Rolled back"
    PROMOTED = "promoted", "Promoted"


OPEN_STATES = (RolloutState.EVALUATING, RolloutState.ROLLING)


class RolloutQuerySet(models.QuerySet):
    def open(self):
        return self.filter(state__in=OPEN_STATES)


class Rollout(models.Model):
    """A candidate configuration offered to a share of the askers, against the baseline (the current one)."""

    candidate = models.ForeignKey(AnswerConfiguration, on_delete=models.PROTECT, related_name="rollouts")
    baseline = models.ForeignKey(AnswerConfiguration, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=RolloutState.choices, default=RolloutState.EVALUATING)
    share = models.PositiveSmallIntegerField(default=0, help_text="Percent of askers who get the candidate")
    reason = models.TextField(blank=True, help_text="Why it was rolled back, rejected or promoted")
    figures = models.JSONField(default=dict, blank=True, help_text="The figures of the last decision")
    evaluation = models.JSONField(default=dict, blank=True, help_text="The shadow evaluation: metrics, verdict")
    evaluation_passed = models.BooleanField(null=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RolloutQuerySet.as_manager()

    class Meta:
        constraints = [
            # One rollout at a time: two candidates at once could not be compared with one baseline.
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state__in=["evaluating", "rolling"]), name="ops_one_open_rollout"
            )
        ]

    def __str__(self) -> str:
        return f"rollout {self.pk}: {self.candidate} ({self.state}, {self.share} %)"


class Deployment(models.Model):
    """One row: the current configuration and the stamp of the rollout state (renewed on every change)."""

    current = models.ForeignKey(AnswerConfiguration, null=True, on_delete=models.PROTECT, related_name="+")
    stamp = models.CharField(max_length=32)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"deployment: {self.current}"
