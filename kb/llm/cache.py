"""Exact and semantic answer caches (issue #4).

Both are keyed by a namespace: the user's permission scope, the index version (every document change
bumps it), the prompt version and the model chain, so an answer is never served across permission
scopes, after the documents changed, or from another prompt or chain. Within a namespace the exact cache
matches the normalised question; the semantic cache the nearest earlier question by embedding, when its
cosine similarity reaches KB_SEMANTIC_CACHE_MIN_SIMILARITY.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from kb import metrics
from kb.llm.models import CachedAnswer

_TRAILING = re.compile(r"[\s?!.。？！]+$")


def normalise(question: str) -> str:
    """Case, spacing and closing punctuation do not change what a question asks."""
    return _TRAILING.sub("", " ".join(question.casefold().split()))


def namespace(*, scope_key: str, index_version: int, prompt_version: str, chain: list[str]) -> str:
    material = json.dumps([scope_key, index_version, prompt_version, chain], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


def question_key(question: str) -> str:
    return hashlib.sha256(normalise(question).encode()).hexdigest()


@dataclass(frozen=True)
class Hit:
    entry_id: int
    kind: str  # "exact" or "semantic"
    similarity: float
    result: dict
    question: str  # the cached question that matched


def _fresh_since():
    return timezone.now() - timedelta(seconds=settings.KB_ANSWER_CACHE_TTL_S)


def lookup_exact(ns: str, question: str) -> Hit | None:
    if settings.KB_ANSWER_CACHE_TTL_S <= 0:
        return None
    entry = (
        CachedAnswer.objects.filter(namespace=ns, question_key=question_key(question), created_at__gte=_fresh_since())
        .only("id", "result", "question")
        .first()
    )
    if entry is None:
        return None
    _touch(entry.pk)
    metrics.ANSWER_CACHE.labels("hit_exact").inc()
    return Hit(entry.pk, "exact", 1.0, entry.result, entry.question)


def lookup_semantic(ns: str, vector: np.ndarray) -> tuple[Hit | None, float | None]:
    """The nearest cached question's hit if similar enough, and its similarity (recorded on a miss too)."""
    if settings.KB_ANSWER_CACHE_TTL_S <= 0 or settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY >= 1.0:
        metrics.ANSWER_CACHE.labels("miss").inc()
        return None, None
    from kb.search.retrieval import vector_literal

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, 1 - (embedding <=> %(v)s::vector) FROM llm_cachedanswer "
            "WHERE namespace = %(ns)s AND created_at >= %(since)s "
            "ORDER BY embedding <=> %(v)s::vector, id LIMIT 1",
            {"v": vector_literal(vector), "ns": ns, "since": _fresh_since()},
        )
        row = cursor.fetchone()
    if row is None:
        metrics.ANSWER_CACHE.labels("miss").inc()
        return None, None
    entry_id, similarity = row[0], float(row[1])
    if similarity < settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY:
        metrics.ANSWER_CACHE.labels("miss").inc()
        return None, similarity
    entry = CachedAnswer.objects.only("id", "result", "question").get(pk=entry_id)
    _touch(entry_id)
    metrics.ANSWER_CACHE.labels("hit_semantic").inc()
    return Hit(entry_id, "semantic", similarity, entry.result, entry.question), similarity


def store(
    ns: str, *, question: str, vector: np.ndarray, index_version: int, result: dict, exchange_id: int | None
) -> None:
    if settings.KB_ANSWER_CACHE_TTL_S <= 0:
        return
    # A concurrent identical question may have stored it first: either answer will do.
    CachedAnswer.objects.bulk_create(
        [
            CachedAnswer(
                namespace=ns,
                question_key=question_key(question),
                question=normalise(question),
                embedding=vector,
                index_version=index_version,
                result=result,
                source_exchange_id=exchange_id,
            )
        ],
        ignore_conflicts=True,
    )


def _touch(entry_id: int) -> None:
    CachedAnswer.objects.filter(pk=entry_id).update(hits=F("hits") + 1, last_hit_at=timezone.now())


def prune(*, current_index_version: int) -> int:
    """Delete entries of older index versions or past their lifetime; they can never be served again."""
    deleted, _ = CachedAnswer.objects.filter(index_version__lt=current_index_version).delete()
    expired, _ = CachedAnswer.objects.filter(created_at__lt=_fresh_since()).delete()
    return deleted + expired
