"""Off-limits topics a knowledge admin sets (kb/guard/topics.py matches questions and answers against them)."""

from __future__ import annotations

from django.db import models

from kb.guard.topics import HAND_TO_PERSON, REFUSE


class TopicResponse(models.TextChoices):
    REFUSE = REFUSE, "Refuse with the message"
    HAND_TO_PERSON = HAND_TO_PERSON, "Hand to a person (the message names whom to ask)"


class TopicQuerySet(models.QuerySet):
    def active(self) -> TopicQuerySet:
        return self.filter(active=True)


class Topic(models.Model):
    name = models.CharField(max_length=120, unique=True)
    examples = models.TextField(help_text="Questions on the topic, one per line.")
    negatives = models.TextField(
        blank=True, help_text="Questions that mention the topic but are fine to answer, one per line."
    )
    response = models.CharField(max_length=16, choices=TopicResponse.choices, default=TopicResponse.REFUSE)
    message = models.TextField()
    contact = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    # The trained classifier (float32 bytes) and the embedding model it was trained on: set by
    # kb.guard.services.topics_train after every change to any topic (each topic is told from the others).
    weight = models.BinaryField(null=True, blank=True, editable=False)
    bias = models.FloatField(default=0.0, editable=False)
    trained_for = models.CharField(max_length=200, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TopicQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
