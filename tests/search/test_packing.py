"""Packed postings: the BM25 leg read from blocks and delta scores exactly as the SQL leg over the postings'
rows, before a pack, after one, with new postings and removals since, and while a database is pending."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from django.db import connection

from ingest.models import Chunk, Document
from kb.search import packing
from kb.search.analyzer import analyze
from kb.search.indexing import index_apply
from kb.search.models import Posting, PostingBlock, PostingDelta
from kb.search.retrieval import ReadScope, bm25_leg, bm25_leg_rows
from tests.search.conftest import TOPIC, WORDS, ingest_file

pytestmark = pytest.mark.django_db
LIMIT = 40


def _queries() -> list[Counter[str]]:
    rng = random.Random(11)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7))) for _ in range(40)]
    texts += [TOPIC, "ledger ledger audit", "train travel first class", "経費精算"]
    return [terms for terms in analyze(texts) if terms]


def _assert_packed_equals_rows(scopes) -> int:
    """Every query, in every scope: the same scores in the same order, each chunk with the score the rows give
    it, and the same chunks above the last score. Chunks of equal score may trade places: the rows' SQL sums
    a chunk's terms in whatever order its aggregate meets them, so identical chunks can differ in the last bit
    there (numpy sums in term order). Returns the hits seen."""
    seen = 0
    for scope in scopes:
        for terms in _queries():
            packed = bm25_leg(terms, scope, LIMIT)
            rows = bm25_leg_rows(terms, scope, LIMIT)
            assert [hit.value for hit in packed] == pytest.approx([hit.value for hit in rows], rel=1e-12), terms
            wider = {hit.chunk_id: hit.value for hit in bm25_leg_rows(terms, scope, 3 * LIMIT)}
            for hit in packed:
                assert hit.value == pytest.approx(wider[hit.chunk_id], rel=1e-12), terms
            if packed:
                cut = packed[-1].value * (1 + 1e-9)
                above = {hit.chunk_id for hit in packed if hit.value > cut}
                assert above == {hit.chunk_id for hit in rows if hit.value > cut}, terms
            seen += len(packed)
    return seen


def _block_chunk_ids(block: PostingBlock) -> list[int]:
    gaps = np.frombuffer(bytes(block.gaps), dtype=">i2").astype(np.int64)
    gaps[gaps == packing.GAP_ESCAPE] = np.frombuffer(bytes(block.escapes or b""), dtype=">i8")
    return (block.base + np.cumsum(gaps)).tolist()


@pytest.fixture
def scopes(search_corpus):
    return [
        ReadScope.all_documents(),
        ReadScope(group_ids=(search_corpus.group_a.pk,)),
        ReadScope(group_ids=(search_corpus.group_b.pk,)),
    ]


def test_the_packed_leg_equals_the_rows_leg_from_the_delta_alone_and_from_blocks(search_corpus, scopes):
    packing.postings_pack(full=True)
    assert not PostingDelta.objects.exists()
    assert _assert_packed_equals_rows(scopes) > 500
    # New postings since the pack are read from the delta beside the blocks.
    added = ingest_file("# Late note\n\nThe quarterly zephyrine audit moved to Fridays.\n", "late.md")
    assert PostingDelta.objects.filter(chunk__document=added).exists()
    _assert_packed_equals_rows(scopes)
    late = bm25_leg(Counter(analyze(["zephyrine audit fridays"])[0]), scopes[0], 5)
    assert late[0].chunk_id in _chunk_ids(added)
    packing.postings_pack()
    assert not PostingDelta.objects.exists()
    _assert_packed_equals_rows(scopes)


def _chunk_ids(document: Document) -> set[int]:
    return set(Chunk.objects.filter(document=document).values_list("id", flat=True))


def test_removed_chunks_left_in_blocks_are_never_returned(search_corpus, scopes):
    packing.postings_pack(full=True)
    removed = search_corpus.group_b_ids[:8] + search_corpus.generated_ids[:5]
    gone = set(Chunk.objects.filter(document_id__in=removed).values_list("id", flat=True))
    index_apply(remove=sorted(gone))
    Chunk.objects.filter(id__in=gone).delete()
    listed = set().union(*(_block_chunk_ids(block) for block in PostingBlock.objects.filter(term__text="zephyrin")))
    assert listed & gone  # the blocks still list removed chunks
    _assert_packed_equals_rows(scopes)
    topic = Counter(analyze([TOPIC])[0])
    assert not {hit.chunk_id for hit in bm25_leg(topic, scopes[0], 100)} & gone


def test_a_pool_of_unreadable_chunks_falls_back_to_every_scored_chunk(search_corpus, settings):
    settings.KB_BM25_FILTER_POOL = 1  # group B's memos outrank group A's notes: the pool holds none of A's
    scope = ReadScope(group_ids=(search_corpus.group_a.pk,))
    topic = Counter(analyze([TOPIC])[0])
    packing.postings_pack(full=True)
    hits = bm25_leg(topic, scope, 3)
    assert [hit.chunk_id for hit in hits] == [hit.chunk_id for hit in bm25_leg_rows(topic, scope, 3)]
    documents = set(Chunk.objects.filter(id__in=[hit.chunk_id for hit in hits]).values_list("document_id", flat=True))
    assert documents == set(search_corpus.group_a_ids)


def test_terms_with_many_blocks_or_many_deleted_postings_are_repacked(search_corpus, scopes):
    packing.postings_pack(full=True)
    ledger = PostingBlock.objects.get(term__text="ledger")
    # Blocks pile up, one per pack in which a term had new postings.
    for number in range(packing.BLOCKS_PER_TERM_MAX):
        ingest_file(f"# Ledger memo {number}\n\nThe ledger closes on day {number}.\n", f"memo-{number}.md")
        result = packing.postings_pack()
        assert result.moved > 0
    assert PostingBlock.objects.filter(term=ledger.term).count() == 1  # its 33rd block made the term repack
    assert result.repacked_terms >= 1
    _assert_packed_equals_rows(scopes)
    # Most of a term's chunks deleted: its block is rewritten from the rows without them.
    memos = Document.objects.filter(filename__startswith="memo-")
    gone = list(Chunk.objects.filter(document__in=memos).values_list("id", flat=True))
    index_apply(remove=gone)
    Chunk.objects.filter(id__in=gone).delete()
    assert packing.postings_pack().repacked_terms >= 1
    day = PostingBlock.objects.filter(term__text="day")
    assert not day.exists() or sum(block.n for block in day) <= 1.25 * day[0].term.df
    _assert_packed_equals_rows(scopes)


def test_a_pending_database_is_scored_from_its_rows_until_a_full_pack(search_corpus, scopes):
    packing.postings_pack(full=True)
    with connection.cursor() as cursor:  # as after the migration: rows that no block holds
        cursor.execute("DELETE FROM search_postingblock")
    packing.pending_mark()
    assert packing.pending()
    _assert_packed_equals_rows(scopes)  # both read the rows
    result = packing.postings_pack()  # beat's pack: a pending database gets the full one
    assert result.full and not packing.pending() and result.repacked_terms > 100
    _assert_packed_equals_rows(scopes)


def test_ranked_orders_by_value_then_chunk_id_and_keeps_the_top():
    ids = np.array([9, 3, 5, 7, 1], dtype=np.int64)
    values = np.array([1.0, 2.0, 2.0, 0.5, 3.0])
    assert packing.ranked(ids, values, None)[0].tolist() == [1, 3, 5, 9, 7]
    assert packing.ranked(ids, values, 2)[0].tolist() == [1, 3]
    assert packing.ranked(ids, values, 3)[1].tolist() == [3.0, 2.0, 2.0]


def test_scores_of_sparse_chunk_ids_are_summed_per_chunk(search_corpus):
    # Chunk ids far apart take the sorting path instead of summing by position: the same sums.
    packing.postings_pack(full=True)
    terms = Counter(analyze(["ledger audit invoice"])[0])
    dense_ids, dense = packing.scores(terms)
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(id) FROM ingest_chunk")
        shift = 10**12 - cursor.fetchone()[0]
    ids, values = dense_ids.copy(), dense.copy()
    ids[len(ids) // 2 :] += shift
    sparse_ids, sparse = packing._sum_by_chunk(np.concatenate([ids, ids]), np.concatenate([values, values]))
    assert sparse_ids.tolist() == sorted(ids.tolist())
    assert sparse == pytest.approx(2 * values[np.argsort(ids)])


def test_a_pool_smaller_than_twice_the_limit_still_finds_every_readable_chunk(search_corpus, settings):
    # Group A's three notes rank below group B's twelve memos; a pool of 1 and a limit of 10: the first slice
    # (the pool, 1 chunk) holds none of A's, and the remaining candidates are fewer than 2 x limit.
    settings.KB_BM25_FILTER_POOL = 1
    packing.postings_pack(full=True)
    scope = ReadScope(group_ids=(search_corpus.group_a.pk,))
    terms = Counter(analyze(["zephyrine"])[0])
    candidates, _ = packing.scores(terms)
    assert len(candidates) < 2 * 10
    hits = bm25_leg(terms, scope, 10)
    assert [hit.chunk_id for hit in hits] == [hit.chunk_id for hit in bm25_leg_rows(terms, scope, 10)]
    assert len(hits) == len(search_corpus.group_a_ids)


def test_postings_out_of_the_codes_range_and_gaps_past_2_to_the_15_score_exactly(search_corpus, scopes):
    # A term 40 times in a passage (tf >= 32) has code 0 and its tf and length written out; a chunk id 2**31
    # past the previous one, its gap written out. Both score as the rows do.
    ingest_file("# Ledger drill\n\n" + "ledger " * 40 + "\n", "drill.md")
    late = _ingest_at_chunk_id(
        2**31 + 8, "# Late ledger\n\nThe ledger audit of the zephyrin memo, filed late.\n", "late.md"
    )
    late_ids = set(late.chunks.values_list("id", flat=True))
    assert min(late_ids) > 2**31
    packing.postings_pack(full=True)
    block = PostingBlock.objects.get(term__text="ledger")
    assert block.escapes and block.wide_tfs and block.wide_lens
    listed = _block_chunk_ids(block)
    assert listed == sorted(Posting.objects.filter(term=block.term).values_list("chunk_id", flat=True))
    assert late_ids <= set(listed) and block.n == len(listed) == block.term.df
    assert _assert_packed_equals_rows(scopes) > 0
    ledger = Counter(analyze(["ledger"])[0])
    assert bm25_leg(ledger, scopes[0], 1)[0].chunk_id == Document.objects.get(filename="drill.md").chunks.get().id
    # The same from the delta, before a pack: a wide posting, and two chunks 2**20 ids apart (an escaped gap).
    ingest_file("# Later ledger\n\n" + "ledger " * 35 + "zephyrin\n", "later.md")
    _ingest_at_chunk_id(2**31 + 2**20, "# Last ledger\n\nThe ledger of the zephyrin audit, filed last.\n", "last.md")
    assert PostingDelta.objects.filter(term__text="ledger").count() == 2
    _assert_packed_equals_rows(scopes)
    ids, _ = packing.scores(ledger)
    assert set(Posting.objects.filter(term__text="ledger").values_list("chunk_id", flat=True)) == set(ids.tolist())


def _ingest_at_chunk_id(first_id: int, text: str, name: str) -> Document:
    """`text` ingested with chunk ids from `first_id` on. A sequence is not rolled back with the test's
    transaction: it is set back to where it was, so that later tests see ids as usual."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('ingest_chunk', 'id')")
        sequence = cursor.fetchone()[0]
        cursor.execute(f"SELECT last_value, is_called FROM {sequence}")
        last_value, is_called = cursor.fetchone()
        cursor.execute("SELECT setval(%s, %s)", [sequence, first_id - 1])
    try:
        return ingest_file(text, name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT setval(%s, %s, %s)", [sequence, last_value, is_called])
