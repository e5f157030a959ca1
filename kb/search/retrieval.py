"""Hybrid retrieval: a pgvector HNSW leg and an exact BM25 leg, both in PostgreSQL, fused by reciprocal rank.

The permission filter is part of each leg's SQL, before its LIMIT: a chunk the user may not read is never
fetched, and forbidden top hits cannot crowd out the readable ones (each leg falls back to an exhaustive
filtered scan when its fast path finds fewer than it was asked for).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from django.conf import settings
from django.db import connection, transaction

# ReadScope is defined with Document.objects.readable_by: one read-permission rule for search and every other read.
from ingest.models import Chunk, ReadScope, heading_label, page_label
from kb.search import embeddings, packing
from kb.search.analyzer import analyze
from kb.search.fusion import Fused, reciprocal_rank_fusion, with_legs_best
from kb.text import text_clean

Mode = Literal["hybrid", "bm25", "vector"]
MODES: tuple[Mode, ...] = ("hybrid", "bm25", "vector")
VECTOR = "vector"
BM25 = "bm25"


# --- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    chunk_id: int
    document_id: int
    title: str
    heading_path: list[str]
    page_start: int | None
    page_end: int | None
    text: str
    fused_score: float
    vector_rank: int | None = None  # 1-based rank in the vector leg; None when that leg did not return it
    bm25_rank: int | None = None
    vector_distance: float | None = None  # cosine distance to the query, known whenever the query was embedded
    bm25_score: float | None = None

    @property
    def vector_similarity(self) -> float | None:
        return None if self.vector_distance is None else 1.0 - self.vector_distance

    @property
    def heading(self) -> str:
        return heading_label(self.heading_path)

    @property
    def pages(self) -> str:
        return page_label(self.page_start, self.page_end)


@dataclass
class Timings:
    """Milliseconds per step, for the audit log and the benchmark."""

    embed_ms: float = 0.0
    analyze_ms: float = 0.0
    vector_ms: float = 0.0
    bm25_ms: float = 0.0
    fusion_ms: float = 0.0
    fetch_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def search_ms(self) -> float:
        """Everything but the query embedding (the model's time, not the database's)."""
        return self.total_ms - self.embed_ms


@dataclass
class SearchResult:
    query: str  # as searched: cleaned and perhaps shortened
    mode: Mode
    hits: list[SearchHit] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    # Said to the user when a query was changed or could not be searched as given; empty otherwise.
    message: str = ""
    truncated: bool = False
    terms: list[str] = field(default_factory=list)  # the analyzer's keywords for the BM25 leg


@dataclass(frozen=True)
class LegHit:
    chunk_id: int
    value: float  # the cosine distance (vector leg) or the BM25 score


# --- the service ------------------------------------------------------------------------------------------


def search(
    query: str, user, k: int = 8, *, mode: Mode = "hybrid", query_vector: np.ndarray | None = None
) -> SearchResult:
    """The k chunks best matching `query` among the documents `user` may read.

    `query_vector` is the query's embedding when the caller already has it (the answer pipeline embeds a
    question once, for its semantic cache and for this search); it must be `embeddings.embed` of the
    query as given.
    """
    return search_in_scope(query, ReadScope.for_user(user), k, mode=mode, query_vector=query_vector)


def search_in_scope(
    query: str,
    scope: ReadScope,
    k: int = 8,
    *,
    mode: Mode = "hybrid",
    query_vector: np.ndarray | None = None,
    legs_best: int = 0,
) -> SearchResult:
    """As `search`, within `scope`. With `legs_best` = n, the last n of the k hits are each leg's best chunk that
    fusion did not place before them, the vector leg's first (`fusion.with_legs_best`)."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    started = time.perf_counter()
    cleaned, truncated = query_clean(query)
    result = SearchResult(query=cleaned, mode=mode, truncated=truncated)
    if truncated:
        result.message = (
            f"Your query was shortened to its first {settings.KB_SEARCH_MAX_QUERY_CHARS:,} characters; "
            "a few precise words find more than a long text."
        )
    if not cleaned:
        result.message = "Type a few words to search for."
        return result
    if scope.nothing or k <= 0:
        if scope.nothing:
            result.message = "You have no access to any documents."
        return result

    depth = max(k, settings.KB_FUSION_TOP_N) if mode == "hybrid" else k
    timings = result.timings
    vector: np.ndarray | None = None
    vector_soon: Future | None = None
    terms: Counter[str] = Counter()
    rankings: dict[str, list[LegHit]] = {}
    if mode in ("hybrid", "vector"):
        if query_vector is not None:
            vector = query_vector
        elif mode == "hybrid":
            vector_soon = _embed_soon(cleaned)  # while the BM25 leg runs
        else:
            vector, timings.embed_ms = _embed_timed(cleaned)
    if mode in ("hybrid", "bm25"):
        t0 = time.perf_counter()
        terms = analyze([cleaned])[0]
        timings.analyze_ms = _ms(t0)
        result.terms = sorted(terms)
        if not terms:
            result.message = result.message or (
                "The query has no keywords (only common words or punctuation)"
                + (": results come from meaning alone." if mode == "hybrid" else "; try the hybrid or vector mode.")
            )
    with transaction.atomic():  # SET LOCAL settings of the vector leg last until its end
        if terms:
            t0 = time.perf_counter()
            rankings[BM25] = bm25_leg(terms, scope, depth)
            timings.bm25_ms = _ms(t0)
        if vector_soon is not None:
            vector, timings.embed_ms = vector_soon.result()
        if vector is not None:
            t0 = time.perf_counter()
            found = [hit.chunk_id for hit in rankings.get(BM25, ())]
            rankings[VECTOR] = vector_leg(vector, scope, depth, also=found)
            timings.vector_ms = _ms(t0)
        rankings = {leg: rankings[leg] for leg in (VECTOR, BM25) if leg in rankings}  # fusion's order of legs
        t0 = time.perf_counter()
        fill = min(legs_best, k) if mode == "hybrid" else 0
        ids = {leg: [hit.chunk_id for hit in hits] for leg, hits in rankings.items()}
        fused = reciprocal_rank_fusion(
            ids,
            k=settings.KB_RRF_K,
            weights={VECTOR: settings.KB_RRF_VECTOR_WEIGHT, BM25: settings.KB_RRF_BM25_WEIGHT},
            limit=None if fill else k,
        )
        if fill:
            fused = with_legs_best(fused, ids, k, fill)
        timings.fusion_ms = _ms(t0)
        t0 = time.perf_counter()
        values = {leg: {hit.chunk_id: hit.value for hit in hits} for leg, hits in rankings.items()}
        result.hits = _hydrate(fused, values, vector)
        timings.fetch_ms = _ms(t0)
    timings.total_ms = _ms(started)
    if not result.hits and not result.message:
        result.message = "Nothing matched; try other words."
    return result


# The query's embedding is computed on a thread of its own while the BM25 leg reads and scores postings (torch,
# numpy and the database driver release the GIL): a hybrid search then takes about max(embedding, BM25 leg)
# instead of their sum (README "Scale"). One thread: embeddings are made one at a time in a process anyway
# (embeddings._encode_lock). One executor per process: an executor made before a fork has no thread in the child.
_embedder: tuple[int, ThreadPoolExecutor] | None = None
_embedder_lock = threading.Lock()


def _embed_soon(text: str) -> Future[tuple[np.ndarray, float]]:
    global _embedder
    with _embedder_lock:
        if _embedder is None or _embedder[0] != os.getpid():
            _embedder = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-query-embedding"))
        executor = _embedder[1]
    return executor.submit(_embed_timed, text)


def _embed_timed(text: str) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return embeddings.embed([text])[0], _ms(t0)


def query_clean(query: str) -> tuple[str, bool]:
    """The query with control characters and runs of spaces removed, cut at a word boundary when too long."""
    text = text_clean(query)
    limit = settings.KB_SEARCH_MAX_QUERY_CHARS
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ")
    # Cut at the last space unless that loses most of the text (a script written without spaces).
    if space > limit // 2:
        cut = cut[:space]
    return cut.strip(), True


# --- the legs ---------------------------------------------------------------------------------------------

# The HNSW index (ingest migrations 0009 and 0010) holds half-precision copies of the vectors; the leg orders
# by the same expression so that the planner walks it, and returns the exact float32 distance.
HNSW_INDEX = "chunk_embedding_hnsw"
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 128  # as migration 0010 builds it (README "Scale", stop 43)
HNSW_ORDER = "(c.embedding::halfvec(384) <=> %(vector)s::halfvec(384))"


def hnsw_index_sql(m: int, ef_construction: int) -> str:
    """The product's HNSW index as DDL, for the benchmarks that drop it for a bulk load and build it again."""
    return (
        f"CREATE INDEX {HNSW_INDEX} ON ingest_chunk USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )


VECTOR_SQL = """
WITH hits AS MATERIALIZED (
    SELECT c.id, c.embedding <=> %(vector)s::vector AS distance
    FROM ingest_chunk c JOIN ingest_document ON ingest_document.id = c.document_id
    WHERE {allowed}
    ORDER BY {order}
    LIMIT %(limit)s
),
also AS (
    SELECT c.id, c.embedding <=> %(vector)s::vector AS distance
    FROM ingest_chunk c JOIN ingest_document ON ingest_document.id = c.document_id
    WHERE c.id = ANY(%(also)s::bigint[]) AND c.id NOT IN (SELECT id FROM hits) AND {allowed}
)
SELECT id, distance, (SELECT count(*) FROM hits) FROM (SELECT * FROM hits UNION ALL SELECT * FROM also) AS found
ORDER BY distance, id
LIMIT %(limit)s
"""


def hnsw_walk_configure(cursor) -> None:
    """The HNSW walk's settings for the rest of the transaction: its breadth, pgvector's iterative scan (it walks on
    until enough rows pass the permission filter) and where that scan gives up."""
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(settings.KB_HNSW_EF_SEARCH)])
    cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
    cursor.execute("SELECT set_config('hnsw.max_scan_tuples', %s, true)", [str(settings.KB_HNSW_MAX_SCAN_TUPLES)])


def vector_leg(
    vector: np.ndarray | Sequence[float], scope: ReadScope, limit: int, *, also: Sequence[int] = ()
) -> list[LegHit]:
    """The `limit` readable chunks nearest to `vector` by cosine distance, nearest first.

    The HNSW index (on half-precision copies of the vectors, `HNSW_ORDER`; the distances returned are the exact
    float32 ones) answers with pgvector 0.8's iterative scan, which keeps walking the graph until enough
    rows pass the permission filter; `relaxed_order` lets it return them slightly out of order, so the
    materialized CTE sorts them again. When the walk stops early (max_scan_tuples), an exact scan over
    the readable chunks answers instead: a user always gets `limit` chunks when that many exist.

    `also`: chunks found another way (the BM25 leg's) whose exact distances are computed too, so that a near
    chunk the walk missed still takes its place; the permission filter applies to them as to the walk.
    """
    allowed, allowed_params = scope.sql()
    params = {"vector": vector_literal(vector), "limit": limit, "also": list(also), **allowed_params}
    with connection.cursor() as cursor:
        hnsw_walk_configure(cursor)
        # Below ~100k chunks the planner would rather sort every readable chunk by its distance than walk the
        # index, and with the index on halfvec copies that sort converts every vector first (SciFact, 11,903
        # chunks: 85 ms against 9 ms for the walk, with the same nDCG@10): the walk is made the only plan.
        cursor.execute("SELECT current_setting('enable_sort'), set_config('enable_sort', 'off', true)")
        sort = cursor.fetchone()[0]
        rows = _fetch(cursor, VECTOR_SQL.format(allowed=allowed, order=HNSW_ORDER), params)
        cursor.execute("SELECT set_config('enable_sort', %s, true)", [sort])
        walked = rows[0][2] if rows else 0
        if walked < limit:
            # `+ 0` keeps the planner off the index: an exact, exhaustive scan of the readable chunks.
            rows = _fetch(
                cursor, VECTOR_SQL.format(allowed=allowed, order="(c.embedding <=> %(vector)s::vector) + 0"), params
            )
    return [LegHit(chunk_id=row[0], value=float(row[1])) for row in rows]


_BM25_SQL = """
WITH stats AS (
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1e-9) AS avgdl
    FROM search_indexstate WHERE id = 1
),
query_terms AS (
    SELECT t.id, q.qtf, ln(1 + (s.n - t.df + 0.5) / (t.df + 0.5)) AS idf
    FROM unnest(%(terms)s::text[], %(qtf)s::int[]) AS q(text, qtf)
    JOIN search_term t ON t.text = q.text
    CROSS JOIN stats s
    WHERE t.df > 0
),
scored AS (
    SELECT p.chunk_id,
           sum(qt.qtf * qt.idf * p.tf * (%(k1)s + 1)
               / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.len / s.avgdl))) AS score
    FROM query_terms qt
    JOIN search_posting p ON p.term_id = qt.id
    CROSS JOIN stats s
    GROUP BY p.chunk_id
),
pool AS (
    SELECT chunk_id, score FROM scored ORDER BY score DESC, chunk_id LIMIT %(pool)s
)
SELECT pool.chunk_id, pool.score
FROM pool
JOIN ingest_chunk c ON c.id = pool.chunk_id
JOIN ingest_document ON ingest_document.id = c.document_id
WHERE {allowed}
ORDER BY pool.score DESC, pool.chunk_id
LIMIT %(limit)s
"""


def bm25_leg(terms: Counter[str], scope: ReadScope, limit: int) -> list[LegHit]:
    """The `limit` readable chunks with the highest BM25 score for `terms` (term -> frequency in the query).

    Exact Okapi BM25 over every posting of every query term, with Lucene's non-negative idf
    ln(1 + (N - df + 0.5) / (df + 0.5)); a term repeated in the query counts as often as it appears, as in
    Lucene and rank-bm25. The postings are read packed by term and scored with numpy (`kb.search.packing`;
    until a database's first pack, from their rows in SQL); the permission filter then applies to the best
    KB_BM25_FILTER_POOL chunks, or, if too few of those are readable, to all of them.
    """
    if not terms or limit <= 0:
        return []
    if packing.pending():
        return bm25_leg_rows(terms, scope, limit)
    chunk_ids, values = packing.scores(terms)
    pool = max(limit, settings.KB_BM25_FILTER_POOL)
    top_ids, top_values = packing.ranked(chunk_ids, values, pool)
    # The readable ones among the best 2 x limit, else among the pool, else among all: the first `limit`
    # readable in score order either way (most scopes read most chunks: the first try usually suffices).
    for size in sorted({min(2 * limit, pool), pool}):
        hits = _readable(top_ids[:size], top_values[:size], scope, limit)
        if len(hits) == limit or size >= len(chunk_ids):
            return hits
    return _readable(*packing.ranked(chunk_ids, values, None), scope, limit)


# One lookup per candidate in score order (a join let the planner scan every readable document per chunk).
_READABLE_SQL = """
SELECT h.chunk_id, h.score
FROM unnest(%(ids)s::bigint[], %(scores)s::float8[]) WITH ORDINALITY AS h(chunk_id, score, place)
CROSS JOIN LATERAL (
    SELECT FROM ingest_chunk c JOIN ingest_document ON ingest_document.id = c.document_id
    WHERE c.id = h.chunk_id AND {allowed} OFFSET 0
) AS readable
ORDER BY h.place
LIMIT %(limit)s
"""


def _readable(chunk_ids: np.ndarray, values: np.ndarray, scope: ReadScope, limit: int) -> list[LegHit]:
    """The first `limit` of the ranked chunks that exist (a block may list deleted ones) and `scope` reads."""
    if not len(chunk_ids):
        return []
    allowed, allowed_params = scope.sql()
    with connection.cursor() as cursor:
        rows = _fetch(
            cursor,
            _READABLE_SQL.format(allowed=allowed),
            {"ids": chunk_ids.tolist(), "scores": values.tolist(), "limit": limit, **allowed_params},
        )
    return [LegHit(chunk_id=row[0], value=float(row[1])) for row in rows]


def bm25_leg_rows(terms: Counter[str], scope: ReadScope, limit: int) -> list[LegHit]:
    """`bm25_leg` scored in SQL from the postings' rows (the truth): before a database's first pack, and the
    reference the packed leg is tested against. Scoring runs on the postings index alone."""
    if not terms or limit <= 0:
        return []
    allowed, allowed_params = scope.sql()
    texts = sorted(terms)
    params = {
        "terms": texts,
        "qtf": [terms[text] for text in texts],
        "k1": settings.KB_BM25_K1,
        "b": settings.KB_BM25_B,
        "limit": limit,
        "pool": max(limit, settings.KB_BM25_FILTER_POOL),
        **allowed_params,
    }
    sql = _BM25_SQL.format(allowed=allowed)
    with connection.cursor() as cursor:
        rows = _fetch(cursor, sql, params)
        if len(rows) < limit:
            rows = _fetch(cursor, sql, {**params, "pool": None})  # LIMIT NULL: every scored chunk
    return [LegHit(chunk_id=row[0], value=float(row[1])) for row in rows]


def _fetch(cursor, sql: str, params: dict) -> list[tuple]:
    cursor.execute(sql, params)
    return cursor.fetchall()


def vector_literal(vector: np.ndarray | Sequence[float]) -> str:
    # 9 significant digits write a float32 back exactly.
    return "[" + ",".join(f"{float(x):.9g}" for x in vector) + "]"


def _hydrate(
    fused: list[Fused[int]], leg_values: dict[str, dict[int, float]], vector: np.ndarray | None
) -> list[SearchHit]:
    if not fused:
        return []
    chunks = (
        Chunk.objects.filter(pk__in=[item.key for item in fused])
        .select_related("document")
        .only("id", "text", "heading_path", "page_start", "page_end", "document__id", "document__title")
    )
    if vector is not None:
        from pgvector.django import CosineDistance

        chunks = chunks.annotate(distance=CosineDistance("embedding", vector))
    by_id = {chunk.pk: chunk for chunk in chunks}
    hits = []
    for item in fused:
        chunk = by_id.get(item.key)
        if chunk is None:  # deleted between the legs and this read
            continue
        distance = leg_values.get(VECTOR, {}).get(chunk.pk, getattr(chunk, "distance", None))
        hits.append(
            SearchHit(
                chunk_id=chunk.pk,
                document_id=chunk.document.pk,
                title=chunk.document.title,
                heading_path=list(chunk.heading_path or []),
                page_start=chunk.page_start,
                page_end=chunk.page_end,
                text=chunk.text,
                fused_score=item.score,
                vector_rank=item.ranks.get(VECTOR),
                bm25_rank=item.ranks.get(BM25),
                vector_distance=None if distance is None else float(distance),
                bm25_score=leg_values.get(BM25, {}).get(chunk.pk),
            )
        )
    return hits


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
