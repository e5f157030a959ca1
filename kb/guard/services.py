"""Writes to the off-limits topics (every change audited, and the classifiers retrained), and the per-process
matcher the ask path passes to the topic guards."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from django.db import transaction

from kb.audit.services import audit_record
from kb.guard.models import Topic, TopicResponse
from kb.guard.topics import (
    EMPTY,
    TopicMatcher,
    TopicSpec,
    lines,
    train_weights,
    vector_from_bytes,
    vector_to_bytes,
)
from kb.text import normalise

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_TOPICS = DATA / "default_topics.json"
BACKGROUND = DATA / "topic_background.txt"
AUDIT_KIND = "topic_change"


class TopicError(ValueError):
    """A topic that cannot be saved; the message says why and what to do."""


def _embed(texts: list[str]) -> np.ndarray:
    from kb.search import embeddings

    return embeddings.embed([normalise(t) for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


_background: dict[str, np.ndarray] = {}


def _background_vectors() -> np.ndarray:
    from kb.search import embeddings

    key = embeddings.model_id()
    if key not in _background:
        questions = [q.strip() for q in BACKGROUND.read_text(encoding="utf-8").splitlines() if q.strip()]
        _background[key] = _embed(questions)
    return _background[key]


def topics_train() -> int:
    """Retrain every active topic's classifier (each is told from the others, so one change retrains all).
    Called in the transaction of every change; returns how many topics were trained."""
    from kb.search import embeddings

    with transaction.atomic():
        topics = list(Topic.objects.active().select_for_update().order_by("pk"))
        forget_matcher()  # this process: at once; and again once committed, in case a question reloaded meanwhile
        transaction.on_commit(forget_matcher)
        if not topics:
            return 0
        examples = [_embed(lines(t.examples)) for t in topics]
        negatives = _embed([n for t in topics for n in lines(t.negatives)])
        trained = train_weights(examples, negatives, _background_vectors())
        model = embeddings.model_id()
        for topic, (weight, bias) in zip(topics, trained, strict=True):
            topic.weight, topic.bias, topic.trained_for = vector_to_bytes(weight), bias, model
            topic.save(update_fields=["weight", "bias", "trained_for", "updated_at"])
        return len(topics)


FIELDS = ("name", "examples", "negatives", "response", "message", "contact", "active")
MIN_EXAMPLES = 5


def _validate(values: dict) -> dict:
    values = {k: (v.strip() if isinstance(v, str) else v) for k, v in values.items()}
    if not values.get("name"):
        raise TopicError("Give the topic a name.")
    count = len(lines(values.get("examples", "")))
    if count < MIN_EXAMPLES:
        raise TopicError(
            f"“{values['name']}” has {count} example question(s); write at least {MIN_EXAMPLES}, one per line, "
            "phrased as employees would ask (20 or more match best)."
        )
    if values.get("response") not in TopicResponse.values:
        raise TopicError("Choose how kb responds: refuse, or hand the question to a person.")
    if not values.get("message"):
        raise TopicError("Write the message employees read instead of an answer.")
    if values["response"] == TopicResponse.HAND_TO_PERSON and not values.get("contact"):
        raise TopicError("Name whom to ask (a team, a person or an address) for a topic handed to a person.")
    return values


def _record(action: str, topic: Topic, actor) -> None:
    audit_record(
        kind=AUDIT_KIND,
        data={
            "action": action,
            "topic_id": topic.pk,
            "name": topic.name,
            "active": topic.active,
            "response": topic.response,
            "examples": len(lines(topic.examples)),
            "negatives": len(lines(topic.negatives)),
        },
        actor=actor,
    )


def topic_create(*, actor=None, train: bool = True, **values) -> Topic:
    """train=False: the caller creates several and trains once (`topics_train`) in the same transaction."""
    values = _validate({k: values.get(k, "") for k in FIELDS if k in values})
    with transaction.atomic():
        if Topic.objects.filter(name__iexact=values["name"]).exists():
            raise TopicError(f"A topic named “{values['name']}” exists already; edit it instead.")
        topic = Topic.objects.create(**values)
        if train:
            topics_train()
        _record("created", topic, actor)
    return topic


def topic_update(*, topic: Topic, actor=None, **values) -> Topic:
    merged = _validate({**{k: getattr(topic, k) for k in FIELDS}, **values})
    with transaction.atomic():
        if Topic.objects.filter(name__iexact=merged["name"]).exclude(pk=topic.pk).exists():
            raise TopicError(f"A topic named “{merged['name']}” exists already; choose another name.")
        for key, value in merged.items():
            setattr(topic, key, value)
        topic.save()
        topics_train()
        _record("updated", topic, actor)
    return topic


def topic_delete(*, topic: Topic, actor=None) -> None:
    with transaction.atomic():
        _record("deleted", topic, actor)
        topic.delete()
        topics_train()


def topics_load_defaults(*, actor=None) -> list[Topic]:
    """The four shipped topics (kb/guard/data/default_topics.json, the ones the thresholds were chosen with);
    a topic of the same name is left as it is."""
    data = json.loads(DEFAULT_TOPICS.read_text(encoding="utf-8"))
    created = []
    with transaction.atomic():
        for item in data["topics"]:
            if Topic.objects.filter(name__iexact=item["name"]).exists():
                continue
            created.append(
                topic_create(
                    actor=actor,
                    train=False,
                    name=item["name"],
                    examples="\n".join(item["examples"]),
                    negatives="\n".join(item.get("negatives", [])),
                    response=item["response"],
                    message=item["message"],
                    contact=item.get("contact", ""),
                    active=True,
                )
            )
        if created:
            topics_train()
    for topic in created:
        topic.refresh_from_db()
    return created


# --- The matcher each process keeps ---------------------------------------------------------------------------
# Keyed by the active topics' (id, updated_at): a change in any web process (a save retrains every topic, so every
# row's updated_at moves) is seen by the others within KB_TOPIC_REFRESH_S (one small query then, not one per ask:
# that query was most of the guards' cost, 0.5 ms p50 / 2 ms p95 on 2 busy cores); at once in the process that
# made it.
_lock = threading.Lock()
_cached: tuple[tuple, TopicMatcher] = ((), EMPTY)
_checked_at = -float("inf")


def forget_matcher() -> None:
    """The next question reloads the topics (after a change here, and between tests)."""
    global _cached, _checked_at
    _cached, _checked_at = ((), EMPTY), -float("inf")


def active_matcher() -> TopicMatcher:
    global _cached, _checked_at
    from django.conf import settings

    from kb.search import embeddings

    now = time.monotonic()
    if now - _checked_at < settings.KB_TOPIC_REFRESH_S:
        return _cached[1]
    key = tuple(Topic.objects.active().order_by("pk").values_list("pk", "updated_at"))
    _checked_at = now
    if key == _cached[0]:
        return _cached[1]
    with _lock:
        model = embeddings.model_id()
        specs = []
        for topic in Topic.objects.active().order_by("pk"):
            if topic.weight is None or topic.trained_for != model:
                log.warning(
                    "off-limits topic %r is not trained for %s: run `manage.py topics train`", topic.name, model
                )
                continue
            specs.append(
                TopicSpec(
                    id=topic.pk,
                    name=topic.name,
                    response=topic.response,
                    message=topic.message,
                    contact=topic.contact,
                    weight=vector_from_bytes(topic.weight),
                    bias=topic.bias,
                )
            )
        _cached = (key, TopicMatcher(specs))
        return _cached[1]


def topics_key() -> str:
    """The active topics as the matcher last loaded them (ids and edit times), for the answer caches' namespace: an
    answer cached before a topic was added, changed or switched off is not served after it (a cached answer skips
    the output guards, the answer-side topic check among them)."""
    active_matcher()
    return hashlib.sha256(repr(_cached[0]).encode()).hexdigest()[:16]
