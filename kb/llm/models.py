"""The answer cache: answers keyed by permission scope, index version, prompt version and model chain."""

from __future__ import annotations

from django.db import models
from pgvector.django import VectorField


class CachedAnswer(models.Model):
    # sha256 of (scope, index version, prompt version, chain): an entry is only ever found by a question asked
    # with the same permissions against the same index, prompt and models.
    namespace = models.CharField(max_length=64)
    question_key = models.CharField(max_length=64, help_text="sha256 of the normalised question")
    question = models.TextField()
    embedding = VectorField(dimensions=384)
    index_version = models.BigIntegerField()
    result = models.JSONField(help_text="The answer as the API returns it, without per-exchange fields")
    source_exchange_id = models.BigIntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    hits = models.IntegerField(default=0)
    last_hit_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "question_key"], name="llm_cache_unique_question")]
        indexes = [models.Index(fields=["index_version"], name="llm_cache_index_version")]

    def __str__(self) -> str:
        return self.question[:60]
