"""The search service: both legs and fusion on the shared corpus, permissions inside the SQL, bad input."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings

from ingest.models import Chunk, Document
from kb.search.retrieval import MODES, ReadScope, search, search_in_scope
from tests.factories import UserFactory
from tests.search.conftest import TOPIC

pytestmark = pytest.mark.django_db
K = 5


@pytest.fixture
def group_a_member(search_corpus):
    user = UserFactory(roles=["Employee"])
    user.access_groups.add(search_corpus.group_a)
    return user


@pytest.fixture
def group_b_member(search_corpus):
    user = UserFactory(roles=["Employee"])
    user.access_groups.add(search_corpus.group_b)
    return user


def _documents(result) -> set[int]:
    return {hit.document_id for hit in result.hits}


def test_every_hit_carries_ranks_scores_and_where_it_is(search_corpus, knowledge_admin):
    result = search("train travel first class", knowledge_admin, K)
    assert result.mode == "hybrid" and len(result.hits) == K
    top = result.hits[0]
    assert top.document_id == search_corpus.public_ids[0]
    assert top.title == "Travel policy" and top.heading_path == ["Travel policy"]
    assert "train travel" in top.text
    assert top.vector_rank == 1 and top.bm25_rank == 1
    assert top.fused_score == pytest.approx(2 / 61)
    assert 0 < top.vector_similarity <= 1 and top.bm25_score > 0
    assert [hit.fused_score for hit in result.hits] == sorted((hit.fused_score for hit in result.hits), reverse=True)
    assert all(hit.vector_distance is not None for hit in result.hits)  # the query was embedded: all have one
    timings = result.timings
    # The embedding runs beside the BM25 leg (on a thread), the vector leg after both.
    assert timings.total_ms >= max(timings.embed_ms, timings.bm25_ms) + timings.vector_ms
    assert timings.embed_ms > 0 and timings.bm25_ms > 0 and timings.vector_ms > 0
    assert result.terms == ["class", "first", "train", "travel"]


@pytest.mark.parametrize("mode", ["bm25", "vector"])
def test_a_single_leg_mode_ranks_by_that_leg_only(search_corpus, knowledge_admin, mode):
    result = search("train travel first class", knowledge_admin, K, mode=mode)
    assert len(result.hits) == K
    other = "vector_rank" if mode == "bm25" else "bm25_rank"
    own = "bm25_rank" if mode == "bm25" else "vector_rank"
    assert [getattr(hit, own) for hit in result.hits] == list(range(1, K + 1))
    assert all(getattr(hit, other) is None for hit in result.hits)
    if mode == "bm25":
        assert result.timings.embed_ms == 0 and all(hit.vector_distance is None for hit in result.hits)


@pytest.mark.parametrize("mode", MODES)
def test_a_user_never_receives_a_forbidden_chunk_and_still_gets_k(search_corpus, group_a_member, mode):
    # Group B's twelve memos repeat the topic four times each: they own the top of both legs.
    everything = search_in_scope(TOPIC, ReadScope.all_documents(), K, mode=mode)
    assert _documents(everything) <= set(search_corpus.group_b_ids)
    result = search(TOPIC, group_a_member, K, mode=mode)
    assert len(result.hits) == K
    assert not _documents(result) & set(search_corpus.group_b_ids)
    assert set(search_corpus.group_a_ids) <= _documents(result)


def test_members_of_the_other_group_see_their_documents_and_public_ones_only(search_corpus, group_b_member):
    result = search(TOPIC, group_b_member, 40)
    allowed = set(search_corpus.group_b_ids + search_corpus.public_ids + search_corpus.generated_ids)
    assert _documents(result) <= allowed
    assert not _documents(result) & set(search_corpus.group_a_ids)


def test_an_employee_in_no_group_reads_only_documents_without_groups(search_corpus, employee):
    result = search(TOPIC, employee, 40)
    assert len(result.hits) == 40
    assert _documents(result) <= set(search_corpus.public_ids + search_corpus.generated_ids)


def test_the_vector_index_scan_keeps_going_past_forbidden_hits(search_corpus, group_a_member):
    # Force the HNSW plan (the planner prefers an exact scan on a corpus this small); a first index pass of
    # one candidate meets only forbidden memos, so the iterative scan has to walk on.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
    with override_settings(KB_HNSW_EF_SEARCH=1):
        result = search(TOPIC, group_a_member, K, mode="vector")
    assert len(result.hits) == K
    assert not _documents(result) & set(search_corpus.group_b_ids)


def test_the_vector_leg_walks_the_half_precision_index_and_returns_exact_distances(
    search_corpus, group_a_member, monkeypatch
):
    # The index is on `embedding::halfvec(384)`: a leg that ordered by another expression would never use it (an
    # exact scan of every readable chunk at each search, unnoticed until a corpus is large).
    from kb.search import embeddings, retrieval

    original, plans = retrieval._fetch, []

    def explained(cursor, sql, params):
        if not plans:
            cursor.execute("EXPLAIN " + sql, params)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
        return original(cursor, sql, params)

    monkeypatch.setattr(retrieval, "_fetch", explained)  # on a corpus this small the planner alone would sort
    result = search(TOPIC, group_a_member, K, mode="vector")
    assert f"Index Scan using {retrieval.HNSW_INDEX}" in plans[0], plans[0]
    assert len(result.hits) == K
    with connection.cursor() as cursor:  # the BM25 leg and whatever follows plan as usual
        cursor.execute("SHOW enable_sort")
        assert cursor.fetchone()[0] == "on"
    vector = retrieval.vector_literal(embeddings.embed([TOPIC])[0])
    with connection.cursor() as cursor:
        for hit in result.hits:
            cursor.execute("SELECT embedding <=> %s::vector FROM ingest_chunk WHERE id = %s", [vector, hit.chunk_id])
            assert hit.vector_similarity == pytest.approx(1 - cursor.fetchone()[0], abs=1e-9)


def test_a_vector_scan_cut_short_falls_back_to_an_exact_scan(search_corpus, group_a_member, monkeypatch):
    # Whether pgvector's walk comes up short depends on the graph (when max_scan_tuples is reached it still
    # returns every candidate it visited, which may be enough), so the index pass is cut to one chunk here:
    # the branch under test is what follows a short pass.
    from kb.search import retrieval

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")  # the reference: an exhaustive scan
    exact = search(TOPIC, group_a_member, K, mode="vector")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = on")
        cursor.execute("SET LOCAL enable_seqscan = off")

    original, passes = retrieval._fetch, []

    def short_index_pass(cursor, sql, params):
        rows = original(cursor, sql, params)
        passes.append(len(rows))
        # The walk found one chunk; the rows are still `limit` (the BM25 leg's chunks can fill them): the walk's
        # own count decides.
        return [(*row[:2], 1) for row in rows] if len(passes) == 1 else rows

    monkeypatch.setattr(retrieval, "_fetch", short_index_pass)
    cut_short = search(TOPIC, group_a_member, K, mode="vector")
    assert len(passes) == 2  # the index pass, then the exact one
    assert [hit.chunk_id for hit in cut_short.hits] == [hit.chunk_id for hit in exact.hits]
    assert len(exact.hits) == K and set(search_corpus.group_a_ids) <= _documents(exact)


def test_chunks_the_bm25_leg_found_take_their_place_when_the_walk_missed_them(
    search_corpus, group_a_member, monkeypatch
):
    # At a million passages the walk misses some of the nearest chunks (README "Scale"); the leg also scores the
    # chunks the BM25 leg found, by their exact distances, and keeps the permission filter on them.
    from kb.search import embeddings, retrieval

    scope = ReadScope.for_user(group_a_member)
    vector = embeddings.embed([TOPIC])[0]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")  # the reference: an exhaustive scan
    exact = retrieval.vector_leg(vector, scope, K)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = on")
        cursor.execute(
            "SELECT c.id FROM ingest_chunk c WHERE c.document_id = ANY(%s) ORDER BY c.embedding <=> %s::vector LIMIT 1",
            [list(search_corpus.group_b_ids), retrieval.vector_literal(vector)],
        )
        forbidden = cursor.fetchone()[0]
    # A walk that goes the wrong way: the K farthest readable chunks.
    monkeypatch.setattr(retrieval, "HNSW_ORDER", "(c.embedding <=> %(vector)s::vector) DESC")
    lost = retrieval.vector_leg(vector, scope, K)
    assert len(lost) == K and exact[0].chunk_id not in {hit.chunk_id for hit in lost}
    also = [exact[1].chunk_id, forbidden, exact[0].chunk_id, lost[0].chunk_id]
    found = retrieval.vector_leg(vector, scope, K + 3, also=also)
    assert [hit.chunk_id for hit in found[:2]] == [exact[0].chunk_id, exact[1].chunk_id]
    assert len({hit.chunk_id for hit in found}) == len(found), "a chunk both walked and found once"
    assert found[0].value == pytest.approx(exact[0].value, abs=1e-12)
    assert forbidden not in {hit.chunk_id for hit in found} and len(found) == K + 3
    assert [hit.value for hit in found] == sorted(hit.value for hit in found)


def test_bm25_rescans_when_the_filter_pool_holds_too_few_readable_chunks(search_corpus, group_a_member):
    full = search(TOPIC, group_a_member, K, mode="bm25")
    with override_settings(KB_BM25_FILTER_POOL=1):
        pooled = search(TOPIC, group_a_member, K, mode="bm25")
    assert [hit.chunk_id for hit in pooled.hits] == [hit.chunk_id for hit in full.hits]
    assert len(pooled.hits) == K


@pytest.mark.parametrize("mode", MODES)
def test_only_chunks_of_searchable_documents_are_found(search_corpus, knowledge_admin, mode):
    travel = search_corpus.public_ids[0]
    Document.objects.filter(pk=travel).update(searchable=False)
    result = search("train travel first class", knowledge_admin, 40, mode=mode)
    assert travel not in _documents(result)
    assert result.hits


def test_users_without_a_reading_role_get_nothing(search_corpus, compliance):
    result = search(TOPIC, compliance, K)
    assert result.hits == [] and "no access" in result.message


def test_anonymous_users_get_nothing(search_corpus):
    from django.contrib.auth.models import AnonymousUser

    assert search(TOPIC, AnonymousUser(), K).hits == []


def test_a_deleted_chunk_between_the_legs_and_the_read_is_skipped(search_corpus, knowledge_admin, monkeypatch):
    from kb.search import retrieval

    original = retrieval.bm25_leg

    def leg_then_delete(*args, **kwargs):
        hits = original(*args, **kwargs)
        Chunk.objects.filter(pk=hits[0].chunk_id).delete()
        return hits

    monkeypatch.setattr(retrieval, "bm25_leg", leg_then_delete)
    result = search(TOPIC, knowledge_admin, K, mode="bm25")
    assert len(result.hits) == K - 1


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "\x00\x01"])
def test_an_empty_query_gets_a_message_and_no_hits(search_corpus, knowledge_admin, query):
    result = search(query, knowledge_admin, K)
    assert result.hits == []
    assert result.message == "Type a few words to search for."


def test_a_10000_character_query_is_shortened_at_a_word_and_still_searched(search_corpus, knowledge_admin, settings):
    query = ("travel desk train booking " * 400)[:10_000]
    result = search(query, knowledge_admin, K)
    assert result.truncated and "shortened" in result.message
    assert len(result.query) <= settings.KB_SEARCH_MAX_QUERY_CHARS
    assert not result.query.endswith(" ") and query.startswith(result.query)
    assert result.hits and result.hits[0].document_id == search_corpus.public_ids[0]


def test_a_long_query_without_spaces_is_cut_at_the_limit(search_corpus, knowledge_admin, settings):
    result = search("経費" * 5000, knowledge_admin, K)
    assert result.truncated and len(result.query) == settings.KB_SEARCH_MAX_QUERY_CHARS
    assert len(result.hits) == K


@pytest.mark.parametrize("query", ["the of and", "?!... ,;:", "to be or not to be"])
def test_stop_words_or_punctuation_leave_bm25_empty_but_the_vector_leg_answers(search_corpus, knowledge_admin, query):
    hybrid = search(query, knowledge_admin, K)
    assert hybrid.terms == [] and "no keywords" in hybrid.message
    assert len(hybrid.hits) == K and all(hit.bm25_rank is None for hit in hybrid.hits)
    keyword_only = search(query, knowledge_admin, K, mode="bm25")
    assert keyword_only.hits == [] and "try the hybrid or vector mode" in keyword_only.message


def test_non_latin_scripts_are_searched_by_both_legs(search_corpus, knowledge_admin):
    result = search("出張の申請", knowledge_admin, K)
    assert result.hits[0].document_id == search_corpus.public_ids[1]
    assert result.terms  # the parser keeps CJK runs as words


@pytest.mark.parametrize(
    "query",
    [
        "'; DROP TABLE search_posting; --",
        "a & b | !c <-> d",
        "ledger:* & (audit | !payroll)",
        "\\'%s %(terms)s {allowed} $$ ::vector",
        "reconciliation' OR '1'='1",
    ],
)
def test_sql_metacharacters_and_tsquery_operators_are_only_text(search_corpus, knowledge_admin, query):
    for mode in MODES:
        result = search(query, knowledge_admin, K, mode=mode)
        assert result.message == "" or "no keywords" in result.message or "Nothing matched" in result.message
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM search_posting")
        assert cursor.fetchone()[0] > 0


def test_an_unknown_mode_is_a_programming_error(knowledge_admin):
    with pytest.raises(ValueError, match="unknown search mode"):
        search("travel", knowledge_admin, K, mode="fuzzy")


def test_a_query_vector_from_the_caller_is_used_instead_of_embedding_again(search_corpus, knowledge_admin):
    from kb.search import embeddings

    query = "train travel first class"
    own = search(query, knowledge_admin, K)
    given = search(query, knowledge_admin, K, query_vector=embeddings.embed([query])[0])
    assert given.timings.embed_ms == 0 < own.timings.embed_ms
    assert [hit.chunk_id for hit in given.hits] == [hit.chunk_id for hit in own.hits]


def test_the_query_is_embedded_on_a_thread_of_each_process_while_the_bm25_leg_runs(
    search_corpus, knowledge_admin, monkeypatch
):
    import threading

    from kb.search import embeddings, retrieval

    threads = []
    embed = embeddings.embed

    def watched(texts, **options):
        threads.append(threading.current_thread().name)
        return embed(texts, **options)

    monkeypatch.setattr(embeddings, "embed", watched)
    query = "train travel first class"
    first = search(query, knowledge_admin, K)
    assert threads == ["kb-query-embedding_0"] and first.timings.embed_ms > 0 and first.hits
    executor = retrieval._embedder[1]
    search(query, knowledge_admin, K, mode="vector")  # one leg: nothing to overlap, embedded here
    assert threads[-1] == threading.current_thread().name
    # A forked child (a Celery pool process) has no thread of its parent's executor: it makes its own.
    monkeypatch.setattr(retrieval.os, "getpid", lambda: -1)
    again = search(query, knowledge_admin, K)
    assert retrieval._embedder[1] is not executor and retrieval._embedder[0] == -1
    assert [hit.chunk_id for hit in again.hits] == [hit.chunk_id for hit in first.hits]


def test_the_read_scope_names_what_a_user_may_read(search_corpus, employee, knowledge_admin, compliance):
    employee.access_groups.add(search_corpus.group_b, search_corpus.group_a)
    ids = sorted([search_corpus.group_a.pk, search_corpus.group_b.pk])
    assert ReadScope.for_user(employee).key == "groups:" + ",".join(map(str, ids))
    assert ReadScope.for_user(knowledge_admin).key == "all"
    assert ReadScope.for_user(compliance).key == "none"


def test_legs_best_ends_the_hits_with_each_legs_best_chunk_not_among_fusions_first(search_corpus):
    scope = ReadScope.all_documents()
    query = "money back for a taxi"
    plain = [hit.chunk_id for hit in search_in_scope(query, scope, K).hits]
    nearest = search_in_scope(query, scope, 1, mode="vector").hits[0].chunk_id
    keyword = [hit.chunk_id for hit in search_in_scope(query, scope, K, mode="bm25").hits]
    assert nearest not in plain  # the vector leg's first chunk: no keyword of the query, fusion buries it
    assert [hit.chunk_id for hit in search_in_scope(query, scope, K, legs_best=0).hits] == plain
    filled = search_in_scope(query, scope, K, legs_best=2).hits
    assert [hit.chunk_id for hit in filled[: K - 2]] == plain[: K - 2]
    assert filled[-2].chunk_id == nearest and filled[-2].vector_rank == 1 and filled[-2].bm25_rank is None
    assert filled[-1].chunk_id == next(chunk for chunk in keyword if chunk not in plain[: K - 2])
    assert len({hit.chunk_id for hit in filled}) == K
    # Single-leg modes have nothing to fill from: legs_best changes nothing there.
    vector = [hit.chunk_id for hit in search_in_scope(query, scope, K, mode="vector").hits]
    assert [hit.chunk_id for hit in search_in_scope(query, scope, K, mode="vector", legs_best=2).hits] == vector
