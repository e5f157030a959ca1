"""The scale corpus generator (kb/evaluation/scale.py): deterministic, resumable, sized as asked, and loaded
into the index exactly as kb's own analyzer and index writer would write it."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from django.db import connection

from ingest.models import ReadScope
from ingest.services import indexed_text
from kb.evaluation import scale
from kb.search.analyzer import analyze
from kb.search.retrieval import search_in_scope

pytestmark = pytest.mark.skipif(
    not (scale.SCIFACT / "corpus.jsonl").exists(), reason="SciFact's corpus.jsonl is not on this machine"
)
ABSTRACTS = 30


@pytest.fixture
def small(tmp_path, monkeypatch):
    """A source of 30 abstracts embedded by the real model, in blocks of 64, and parts of 100 passages."""
    monkeypatch.setattr(scale, "EMBED_BLOCK", 64)
    monkeypatch.setattr(scale, "PART_SIZE", 100)
    return tmp_path, scale.source_ensure(tmp_path, log=lambda _: None, limit=ABSTRACTS)


def test_passages_are_deterministic_and_of_the_asked_length(small):
    _root, source = small
    order = scale._abstract_order(source)
    first = [scale.passage_make(source, n, order) for n in range(200)]
    again = [scale.passage_make(source, n, order) for n in range(200)]
    assert first == again
    words = [len(p.text.split()) for p in first]
    longest_sentence = int(source.words.max())
    assert min(words) >= scale.WORDS[0]
    assert max(words) <= scale.WORDS[1] + longest_sentence
    assert 150 <= np.median(words) <= 220
    assert [p.document for p in first[:21]] == [0] * 20 + [1]
    assert len({p.text for p in first}) == len(first)  # recombined, not repeated
    assert {len(p.groups) for p in first} <= {0, 1}


def test_parts_resume_and_a_smaller_corpus_is_a_prefix_of_a_larger(small, tmp_path_factory):
    root, source = small
    assert scale.parts_ensure(root, source, 300, log=lambda _: None) == 3
    text_path, vector_path = scale.part_paths(root, 1)
    before = text_path.read_bytes(), np.load(vector_path)
    text_path.unlink()  # as if the run had stopped while writing part 1
    scale.parts_ensure(root, source, 300, log=lambda _: None)
    assert text_path.read_bytes() == before[0]
    assert np.array_equal(np.load(vector_path), before[1])
    other = tmp_path_factory.mktemp("smaller")
    scale.parts_ensure(other, source, 200, log=lambda _: None)
    assert scale.part_paths(other, 1)[0].read_bytes() == before[0]
    assert not scale.part_paths(other, 2)[0].exists()
    with pytest.raises(ValueError, match="multiple of 100"):
        scale.parts_ensure(root, source, 150, log=lambda _: None)


def test_sentence_vectors_resume_block_by_block(small):
    root, source = small
    blocks = sorted((root / "sentence-vectors").glob("*.npy"))
    assert len(blocks) == -(-len(source.texts) // 64)
    kept = np.load(blocks[-1])
    blocks[-1].unlink()
    again = scale.vectors_ensure(root, source.texts, log=lambda _: None)
    assert np.allclose(again, source.vectors, atol=1e-5)
    assert np.allclose(np.load(blocks[-1]), kept, atol=1e-5)


def test_passage_vectors_are_unit_and_close_to_the_mean_of_their_sentences(small):
    _root, source = small
    order = scale._abstract_order(source)
    made = [scale.passage_make(source, n, order) for n in range(50)]
    vectors = scale.passage_vectors(source, made)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    means = np.stack([source.vectors[p.parts].mean(axis=0) for p in made])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    cosine = (vectors * means).sum(axis=1)
    assert cosine.min() > 0.99
    assert cosine.max() < 1.0 - 1e-6  # the noise is there


@pytest.mark.django_db
def test_a_loaded_part_is_indexed_as_kbs_own_writer_would(small):
    root, source = small
    scale.parts_ensure(root, source, 100, log=lambda _: None)
    with connection.cursor() as cursor:
        scale._progress_tables(cursor)
    scale.part_load(0, scale._groups_ensure(), root)
    rows, _ = scale.part_read(root, 0)
    expected = analyze([indexed_text(r["title"], r["text"], r["heading_path"]) for r in rows])
    with connection.cursor() as cursor:
        cursor.execute("SELECT chunk_count, total_length FROM search_indexstate WHERE id = 1")
        assert cursor.fetchone() == (100, sum(sum(c.values()) for c in expected))
        cursor.execute(
            "SELECT t.text, p.tf FROM search_posting p JOIN search_term t ON t.id = p.term_id WHERE p.chunk_id = 1"
        )
        assert Counter(dict(cursor.fetchall())) == expected[0]
        cursor.execute("SELECT t.text, t.df FROM search_term t")
        df = dict(cursor.fetchall())
        assert df == Counter(term for counter in expected for term in counter)
        cursor.execute("SELECT part FROM scale_part")
        assert cursor.fetchall() == [(0,)]
    # The admin finds a passage by its own words; the employee never sees another group's documents.
    hit = search_in_scope(rows[7]["text"][:200], ReadScope.all_documents(), 3).hits[0]
    assert hit.chunk_id == 8
    employee = ReadScope(group_ids=scale.reader_group_ids())
    outside = {r["document"] + 1 for r in rows if r["groups"] and r["groups"][0] > scale.READER_GROUPS}
    found = {h.document_id for r in rows[:20] for h in search_in_scope(r["text"][:200], employee, 5).hits}
    assert found and not found & outside
    assert json.loads(json.dumps(rows[0]["heading_path"])) == rows[0]["heading_path"]


def test_the_scale_corpus_builds_the_products_hnsw_index():
    import importlib

    from kb.search import retrieval

    migration = importlib.import_module("ingest.migrations.0010_chunk_hnsw_m32")
    assert (scale.HNSW_M, scale.HNSW_EF_CONSTRUCTION) == (retrieval.HNSW_M, retrieval.HNSW_EF_CONSTRUCTION)
    assert f"m = {retrieval.HNSW_M}, ef_construction = {retrieval.HNSW_EF_CONSTRUCTION}" in migration.M32
    assert migration.M32.split("USING ", 1)[1] in retrieval.hnsw_index_sql(
        retrieval.HNSW_M, retrieval.HNSW_EF_CONSTRUCTION
    )
