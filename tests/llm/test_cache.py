"""The answer caches (kb/llm/cache.py) on real PostgreSQL + pgvector with the real embedding model."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from kb.llm import cache
from kb.llm.models import CachedAnswer
from kb.search import embeddings
from kb.text import normalise

HOTEL = "What is the hotel limit per night in Amsterdam?"
RESULT = {"answer": "The limit is 180 euros per night [1].", "citations": [{"n": 1}], "refused": False}
BASE = {"scope_key": "groups:", "index_version": 3, "prompt_version": "answer-v1@abc", "chain": ["extractive"]}
NS = cache.namespace(**BASE)


def vector(question: str):
    """The semantic cache's embedding of a question: of its normalised form, as the ask path computes it."""
    return embeddings.embed([normalise(question)])[0]


def put(question: str, *, ns: str = NS, index_version: int = 3, result: dict | None = None) -> None:
    cache.store(
        ns, question=question, vector=vector(question), index_version=index_version, result=result or RESULT,
        exchange_id=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"scope_key": "groups:7"},
        {"scope_key": "all"},
        {"index_version": 4},
        {"prompt_version": "answer-v1@abd"},
        {"chain": ["anthropic:claude-haiku-5-5", "extractive"]},
    ],
)
def test_the_namespace_differs_by_scope_index_version_prompt_version_and_chain(change):
    assert cache.namespace(**{**BASE, **change}) != NS
    assert cache.namespace(**BASE) == NS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KB_ANSWER_PASSAGES", 8),
        ("KB_ANSWER_LEG_PASSAGES", 0),
        ("KB_RRF_K", 10),
        ("KB_EVIDENCE_MIN_SCORE", 0.5),
        ("KB_EXTRACTIVE_MIN_PROBABILITY", 0.6),
        ("KB_GROUNDING_MIN_SCORE", 0.4),
    ],
)
def test_the_namespace_differs_when_a_setting_that_makes_answers_changes(settings, name, value):
    """A rollout that changes how passages are found or answers made is not served the answers made before it."""
    before = cache.namespace(**BASE)
    assert getattr(settings, name) != value
    setattr(settings, name, value)
    assert cache.namespace(**BASE) != before
    assert all(hasattr(settings, setting) for setting in cache.ANSWER_SETTINGS)


def test_the_namespace_differs_when_the_extractive_answer_quotes_otherwise(monkeypatch):
    import dataclasses

    from kb.llm import extractive

    before = cache.namespace(**BASE)
    monkeypatch.setattr(extractive, "WEIGHTS", dataclasses.replace(extractive.WEIGHTS, keywords=0.9))
    assert cache.namespace(**BASE) != before
    monkeypatch.undo()
    monkeypatch.setattr(extractive, "MAX_UNITS", extractive.MAX_UNITS + 1)
    assert cache.namespace(**BASE) != before


def test_the_namespace_differs_when_the_answering_code_changes(tmp_path, monkeypatch):
    """A deploy that changes how answers are made (here one line of the extractive answerer, or a refitted
    answerability model) is not served the answers the old code made, with every setting and prompt file
    unchanged."""
    import shutil

    kb_root = Path(cache.__file__).resolve().parent.parent
    for folder in cache.ANSWER_CODE:
        (tmp_path / folder).mkdir(parents=True)
        for path in (kb_root / folder).glob("*.py"):
            shutil.copy(path, tmp_path / folder / path.name)
    for folder in cache.ANSWER_DATA:
        shutil.copytree(kb_root / folder, tmp_path / folder)
    assert cache.answer_code_digest(tmp_path) == cache.answer_code_digest()  # what the running code uses
    model = tmp_path / "llm" / "data" / "answerability.json"
    model.write_text(model.read_text().replace('"intercept": ', '"intercept": 1', 1))
    assert cache.answer_code_digest.__wrapped__(tmp_path) != cache.answer_code_digest()
    shutil.copy(kb_root / "llm" / "data" / "answerability.json", model)
    extractive = tmp_path / "llm" / "extractive.py"
    extractive.write_text(extractive.read_text().replace("MAX_UNITS = ", "MAX_UNITS = 1 + ", 1))
    changed = cache.answer_code_digest.__wrapped__(tmp_path)
    assert changed != cache.answer_code_digest()
    (tmp_path / "llm" / "migrations").mkdir()
    (tmp_path / "llm" / "migrations" / "0099_other.py").write_text("# a migration answers nothing\n")
    assert cache.answer_code_digest.__wrapped__(tmp_path) == changed
    before = cache.namespace(**BASE)
    monkeypatch.setattr(cache, "answer_code_digest", lambda: changed)
    assert cache.namespace(**BASE) != before


def test_the_namespace_ignores_settings_that_do_not_make_answers(settings):
    before = cache.namespace(**BASE)
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 0.99
    settings.KB_RATE_LIMIT_PER_MINUTE = 1
    assert cache.namespace(**BASE) == before


def test_an_exact_lookup_matches_the_normalised_question_within_its_namespace(db):
    put(HOTEL)
    hit = cache.lookup_exact(NS, "  what is the HOTEL limit per night in Amsterdam ")
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    assert hit.result == RESULT and hit.question == normalise(HOTEL)
    entry = CachedAnswer.objects.get(pk=hit.entry_id)
    assert entry.hits == 1 and entry.last_hit_at is not None
    assert cache.lookup_exact(cache.namespace(**{**BASE, "scope_key": "all"}), HOTEL) is None
    assert cache.lookup_exact(NS, "What is the hotel limit per night in Rotterdam?") is None


def test_a_paraphrase_above_the_threshold_is_a_semantic_hit(db, settings):
    put(HOTEL)
    paraphrase = "What's the hotel limit per night for Amsterdam?"
    hit, nearest = cache.lookup_semantic(NS, paraphrase, vector(paraphrase))
    assert hit is not None and hit.kind == "semantic" and hit.result == RESULT
    assert settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY <= hit.similarity < 1 and nearest == pytest.approx(hit.similarity)
    assert CachedAnswer.objects.get(pk=hit.entry_id).hits == 1


def test_the_threshold_decides_between_a_hit_and_a_miss(db, settings):
    put(HOTEL)
    paraphrase = "What's the hotel limit per night for Amsterdam?"
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 0.5
    hit, similarity = cache.lookup_semantic(NS, paraphrase, vector(paraphrase))
    assert hit is not None
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = similarity + 0.001
    missed, nearest = cache.lookup_semantic(NS, paraphrase, vector(paraphrase))
    assert missed is None and nearest == pytest.approx(similarity), "a miss still reports the nearest similarity"
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = similarity - 0.001
    assert cache.lookup_semantic(NS, paraphrase, vector(paraphrase))[0] is not None


def test_an_unrelated_question_misses_the_semantic_cache(db, settings):
    put(HOTEL)
    question = "How long must a password be?"
    hit, nearest = cache.lookup_semantic(NS, question, vector(question))
    assert hit is None and nearest is not None and nearest < settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("Is version 2.3 of the client supported?", "Is version 3.2 of the client supported?"),
        ("How many days of leave after two years?", "How many days of leave after three years?"),
        ("Do flights need the approval of a director?", "Do flights not need the approval of a director?"),
        ("Can I book hotels through the travel desk?", "Can't I book hotels through the travel desk?"),
    ],
)
def test_questions_with_different_numbers_or_negations_never_hit(db, settings, cached, asked):
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 0.5  # however close their embeddings are
    put(cached)
    hit, nearest = cache.lookup_semantic(NS, asked, vector(asked))
    assert hit is None and nearest is not None and nearest > 0.5
    # The same question in other words but the same numbers and negations does hit at this threshold.
    same = cached.replace("?", " please?")
    assert cache.lookup_semantic(NS, same, vector(same))[0] is not None


def test_a_compatible_question_behind_an_incompatible_nearer_one_still_hits(db, settings):
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 0.5
    put("Is version 2.3 of the client supported?", result={"answer": "2.3 is."})
    put("Is version 3.2 of the client supported today?", result={"answer": "3.2 is."})
    asked = "Is version 3.2 of the client supported?"
    hit, nearest = cache.lookup_semantic(NS, asked, vector(asked))
    assert hit is not None and hit.result == {"answer": "3.2 is."}
    assert nearest > hit.similarity, "the nearest cached question was the incompatible one"


def test_entries_past_their_lifetime_are_not_served(db, settings):
    settings.KB_ANSWER_CACHE_TTL_S = 3600
    put(HOTEL)
    assert cache.lookup_exact(NS, HOTEL) is not None
    CachedAnswer.objects.update(created_at=timezone.now() - timedelta(seconds=3601))
    assert cache.lookup_exact(NS, HOTEL) is None
    hit, nearest = cache.lookup_semantic(NS, HOTEL, vector(HOTEL))
    assert hit is None and nearest is None


def test_a_lifetime_of_zero_turns_the_caches_off(db, settings):
    settings.KB_ANSWER_CACHE_TTL_S = 0
    put(HOTEL)
    assert not CachedAnswer.objects.exists()
    assert cache.lookup_exact(NS, HOTEL) is None and cache.lookup_semantic(NS, HOTEL, vector(HOTEL)) == (None, None)


def test_prune_deletes_entries_of_older_index_versions_and_expired_ones(db, settings):
    settings.KB_ANSWER_CACHE_TTL_S = 3600
    put(HOTEL, index_version=1)
    put("Which approval do flights need?", index_version=2)
    put("How long must a password be?", index_version=2)
    CachedAnswer.objects.filter(question=normalise("How long must a password be?")).update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    assert cache.prune(current_index_version=2) == 2
    assert list(CachedAnswer.objects.values_list("question", flat=True)) == [
        normalise("Which approval do flights need?")
    ]


def test_store_ignores_a_duplicate_question_in_the_same_namespace(db):
    put(HOTEL, result={"answer": "first"})
    put("what is the hotel limit per night in amsterdam", result={"answer": "second"})
    assert CachedAnswer.objects.count() == 1
    assert cache.lookup_exact(NS, HOTEL).result == {"answer": "first"}
    put(HOTEL, ns=cache.namespace(**{**BASE, "index_version": 4}), result={"answer": "other namespace"})
    assert CachedAnswer.objects.count() == 2
