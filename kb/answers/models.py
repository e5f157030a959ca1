"""Conversations and exchanges: each question asked, what was done with it and what came back."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Sum
from django.utils import timezone


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-updated_at"], name="answers_conversation_recent")]

    def __str__(self) -> str:
        return self.title


class Outcome(models.TextChoices):
    PENDING = "pending", "In progress"
    ANSWERED = "answered", "Answered"
    CACHED = "cached", "Answered from cache"
    REFUSED = "refused", "Not covered"
    BLOCKED = "blocked", "Blocked"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class ExchangeQuerySet(models.QuerySet):
    def of_user(self, user):
        return self.filter(user=user)

    def since(self, moment):
        return self.filter(created_at__gte=moment)

    def spent_usd(self) -> float:
        return float(self.aggregate(total=Sum("cost_usd"))["total"] or 0)

    def today(self):
        now = timezone.now()
        return self.since(now.replace(hour=0, minute=0, second=0, microsecond=0))


class Exchange(models.Model):
    """One question and its answer, whatever the outcome. Written when the question arrives (pending) and
    completed when the answer is; a client that goes away leaves it cancelled with what was said so far."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="exchanges")
    conversation = models.ForeignKey(Conversation, null=True, on_delete=models.SET_NULL, related_name="exchanges")
    request_id = models.CharField(max_length=64, blank=True)
    question = models.TextField()
    search_query = models.TextField(blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    answer = models.TextField(blank=True)
    citations = models.JSONField(default=list)
    refused = models.BooleanField(default=False)
    refusal_reason = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=100, blank=True, help_text="The link that answered")
    chain = models.JSONField(default=list)
    route = models.CharField(max_length=16, blank=True, help_text="The router's tier: fast, strong or default")
    routing = models.JSONField(
        default=dict, help_text="Tier, why, the chain used, and whether the internal-models-only rule applied"
    )
    prompt_version = models.CharField(max_length=100, blank=True)
    # The answer configuration (kb/ops) that answered; null: the environment's, before any was stored.
    configuration = models.ForeignKey(
        "ops.AnswerConfiguration", null=True, blank=True, on_delete=models.PROTECT, related_name="exchanges"
    )
    fallback_used = models.BooleanField(default=False)
    attempts = models.JSONField(default=list)
    notices = models.JSONField(default=list)
    cache = models.JSONField(default=dict, help_text="kind (exact/semantic/miss/skipped), similarity, entry")
    passages = models.JSONField(default=list, help_text="Retrieved chunks with document versions, ranks and scores")
    evidence_score = models.FloatField(null=True)
    guard_verdicts = models.JSONField(default=list, help_text="Every input and output guard's verdict")
    grounding = models.JSONField(default=list, help_text="Per sentence: what it cites, its support score")
    usage = models.JSONField(default=dict)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency = models.JSONField(default=dict, help_text="Milliseconds per step")
    latency_ms = models.FloatField(null=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True)

    objects = ExchangeQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["user", "created_at"], name="answers_exchange_user_time"),
            models.Index(fields=["created_at"], name="answers_exchange_time"),
            # The abandoned-exchange sweep reads only the few pending rows (services.exchanges_close_abandoned).
            models.Index(fields=["created_at"], condition=models.Q(outcome="pending"), name="answers_exchange_pending"),
            # A rollout's figures read one configuration's exchanges since the rollout started (kb/ops/figures.py).
            models.Index(fields=["configuration", "created_at"], name="answers_exchange_config_time"),
        ]

    def __str__(self) -> str:
        return f"{self.pk}: {self.question[:60]}"


class Feedback(models.Model):
    """An employee's rating of one answer (the latest rating counts)."""

    class Rating(models.TextChoices):
        UP = "up", "Helpful"
        DOWN = "down", "Not helpful"

    class Reason(models.TextChoices):
        WRONG = "wrong", "Wrong"
        NOT_CITED = "not_cited", "Not cited"
        OUTDATED = "outdated", "Outdated"
        INCOMPLETE = "incomplete", "Incomplete"
        OTHER = "other", "Other"

    exchange = models.OneToOneField(Exchange, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    reason = models.CharField(max_length=16, choices=Reason.choices, blank=True)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.exchange_id}: {self.rating}"
