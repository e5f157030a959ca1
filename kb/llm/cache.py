"""Exact and semantic answer caches (issue #4).

Both are keyed by a namespace: the user's permission scope, the index version (every document change
bumps it), the prompt version, the model chain, the off-limits topics and what makes answers (`answer_settings`:
ANSWER_SETTINGS, the embedding model, the shipped answerability and toxicity models by content, the extractive
answerer's unit weights and limits, the source of the code that makes answers), so an answer is never served
across permission scopes, after the documents or the topics changed, or from another prompt, chain, model,
retrieval setting or version of the answering code. Within a namespace the exact cache
matches the normalised question; the semantic cache the nearest earlier question by embedding, when its
cosine similarity reaches KB_SEMANTIC_CACHE_MIN_SIMILARITY.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db.models import F
from django.utils import timezone
from pgvector.django import CosineDistance

from kb import metrics
from kb.llm.models import CachedAnswer
from kb.text import normalise

_CARDINALS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_ORDINALS = ("zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_OTHER_NUMBER_WORDS = ("twenty", "hundred", "thousand", "million", "billion", "half", "once", "twice", "dozen")
# Number words as digits, so that "two-factor" and "2FA", or "second floor" and "2nd floor", agree.
_NUMBER_WORDS = {word: str(i) for words in (_CARDINALS, _ORDINALS) for i, word in enumerate(words)}
_NUMBER_WORDS |= {word: word for word in _OTHER_NUMBER_WORDS}
_NEGATIONS = frozenset(("not", "no", "never", "none", "nor", "cannot", "without"))
# Cached questions within the threshold that are checked for a compatible one, nearest first.
SEMANTIC_CANDIDATES = 3


def numbers(question: str) -> frozenset[str]:
    text = question.lower()
    digits = re.findall(r"\d+(?:[.,]\d+)*", text)
    words = [_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text) if w in _NUMBER_WORDS]
    return frozenset(digits) | frozenset(words)


def negations(question: str) -> int:
    words = re.findall(r"[a-z']+", question.lower())
    return sum(1 for w in words if w in _NEGATIONS or w.endswith("n't"))


def same_numbers_and_negations(a: str, b: str) -> bool:
    """Questions that differ in a number or a negation are different questions, however close their
    embeddings ("version 2.3" and "version 3.2" score 0.991; tests/bench/test_semantic_cache_calibration.py)."""
    return numbers(a) == numbers(b) and negations(a) == negations(b)


# The settings that decide which passages a question is given and what answer is made of them. An answer cached
# under other values was not made the way this deployment now makes answers: a rollout that changes one (more
# passages, another gate or fusion constant) must not serve the old answers until the documents change.
ANSWER_SETTINGS = (
    "KB_SEARCH_MAX_QUERY_CHARS",
    "KB_TEXT_SEARCH_CONFIG",
    "KB_ANSWER_PASSAGES",
    "KB_ANSWER_LEG_PASSAGES",
    "KB_FUSION_TOP_N",
    "KB_RRF_K",
    "KB_RRF_VECTOR_WEIGHT",
    "KB_RRF_BM25_WEIGHT",
    "KB_BM25_K1",
    "KB_BM25_B",
    "KB_HNSW_EF_SEARCH",
    "KB_EVIDENCE_MIN_SCORE",
    "KB_EXTRACTIVE_MIN_PROBABILITY",
    "KB_ROUTE_LONG_QUESTION_WORDS",
    "KB_ROUTE_AGREED_RANK",
    "KB_LLM_MAX_TOKENS",
    "KB_OUTPUT_GUARDS",
    "KB_GROUNDING_MIN_SCORE",
    "KB_ANSWER_TOXICITY_THRESHOLD",
    "KB_ANSWER_TOPIC_THRESHOLD",
)


# The packages whose modules (not their subfolders: migrations, management commands) turn a question into an
# answer: retrieval, the ask path's stages, prompt rendering, the model layer, the extractive answerer, the guards.
# A deploy that changes one of them may answer otherwise with every setting and prompt file unchanged; so may one
# that ships a refitted model (the answerability model, the guards' classifiers): their `data` folders count too.
ANSWER_CODE = ("answers/pipeline", "guard", "llm", "search")
ANSWER_DATA = ("guard/data", "llm/data")
DATA_SUFFIXES = ("*.json", "*.txt")  # what kb reads there; an editor's backup or a dotfile does not count
_KB_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@functools.cache
def answer_code_digest(root: Path = _KB_ROOT) -> str:
    """A digest of the ANSWER_CODE modules' source and the ANSWER_DATA files under `root` (the kb package), by
    path and content."""
    digest = hashlib.sha256()
    paths = [path for folder in ANSWER_CODE for path in sorted((root / folder).glob("*.py"))]
    for folder in ANSWER_DATA:
        found = {path for suffix in DATA_SUFFIXES for path in (root / folder).glob(suffix)}
        paths += sorted(path for path in found if not path.name.startswith("."))
    for path in paths:
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def answer_settings() -> list:
    """ANSWER_SETTINGS' values, the embedding model, the shipped models that decide an answer's text (the
    extractive answerer's, the toxicity screen's) by content, how the extractive answerer picks its quotes, and
    the answering code's digest."""
    from kb.guard.toxicity import MODEL_PATH as TOXICITY_MODEL
    from kb.llm import extractive
    from kb.search.embeddings import model_id

    models = [_file_digest(extractive.MODEL_PATH), _file_digest(TOXICITY_MODEL)]
    quoting = [
        dataclasses.astuple(extractive.WEIGHTS), extractive.MAX_UNITS, extractive.MAX_CHARS, extractive.PASSAGES,
        extractive.MIN_SENTENCE_CHARS, extractive.EMBEDDED, extractive.PREFILTER_RANK, extractive.MODEL_MIN_UNITS,
        extractive.FEW_UNITS_BAR, extractive.FEW_UNITS_NAMED,
    ]  # fmt: skip
    code = answer_code_digest()
    return [model_id(), *models, *quoting, code, *(getattr(settings, name) for name in ANSWER_SETTINGS)]


def namespace(*, scope_key: str, index_version: int, prompt_version: str, chain: list[str], topics: str = "") -> str:
    """`topics`: the off-limits topics' state (`kb.guard.services.topics_key`)."""
    material = json.dumps(
        [scope_key, index_version, prompt_version, chain, topics, answer_settings()], separators=(",", ":")
    )
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


def lookup_semantic(ns: str, question: str, vector: np.ndarray) -> tuple[Hit | None, float | None]:
    """The nearest compatible cached question's hit if similar enough, and the nearest similarity (recorded on
    a miss too). `vector` is the embedding of `normalise(question)`."""
    if settings.KB_ANSWER_CACHE_TTL_S <= 0 or settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY >= 1.0:
        metrics.ANSWER_CACHE.labels("miss").inc()
        return None, None
    rows = [
        (entry_id, 1.0 - float(distance), cached_question)
        for entry_id, distance, cached_question in CachedAnswer.objects.filter(
            namespace=ns, created_at__gte=_fresh_since()
        )
        .annotate(distance=CosineDistance("embedding", vector))
        .order_by("distance", "id")
        .values_list("id", "distance", "question")[:SEMANTIC_CANDIDATES]
    ]
    nearest = float(rows[0][1]) if rows else None
    for entry_id, similarity, cached_question in rows:
        if float(similarity) < settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY:
            break
        if not same_numbers_and_negations(question, cached_question):
            continue
        entry = CachedAnswer.objects.only("id", "result", "question").get(pk=entry_id)
        _touch(entry_id)
        metrics.ANSWER_CACHE.labels("hit_semantic").inc()
        return Hit(entry_id, "semantic", float(similarity), entry.result, entry.question), nearest
    metrics.ANSWER_CACHE.labels("miss").inc()
    return None, nearest


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
