"""Postings packed by term: the BM25 leg reads each query term's postings as a few rows of byte strings and
scores them with numpy, instead of reading and aggregating one database row per posting.

Scoring one row per posting costs about 2 microseconds a posting in PostgreSQL (README "Scale"): a query
whose terms hold two million postings takes seconds. The rows of `search_posting` stay the truth (document
frequencies, removals and the exact fallback read them); `index_apply` also writes each new posting into
`search_postingdelta`, and `postings_pack` moves the delta into blocks, one block per term and pack, in one
statement, so that a search (one statement too) sees every posting exactly once: in a block or in the delta.
A removal deletes the truth's and the delta's rows of its chunks in the chunks' own transaction; what is
already in a block stays there until the term is repacked, and the leg drops chunks that no longer exist.
A term with many blocks, or whose blocks list many deleted chunks, is repacked from the truth.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
from django.conf import settings
from django.db import OperationalError, connection, transaction

from kb.search.models import PackPending

logger = logging.getLogger(__name__)

# One pack at a time (a second one finds the lock taken and leaves); the two-key form, apart from the one-key
# locks taken elsewhere.
_PACK_LOCK = (0x6B62, 0x7061)  # "kb", "pa"
# A term's blocks are rewritten as one when there are more than this many of them (each search reads every
# block of its terms: many small ones cost a row each), or when they list this share more postings than
# the term has live ones (deleted chunks). Not tuned: during steady ingestion (a pack a minute) a common term
# is rewritten from the truth about every half hour, which costs up to a second for the commonest at 1M.
BLOCKS_PER_TERM_MAX = 32
STALE_SHARE_MAX = 0.25

# A block lists its postings in chunk id order, each as two 2-byte big-endian integers: the gap from the
# previous chunk id (the first chunk id is the block's `base`) and a code tf << 10 | len, scored through a
# table of the 32,768 codes. 4 bytes and a table lookup a posting instead of 16 bytes and seven arithmetic
# passes: at a million passages a query reads up to 3 million postings (README "Scale"). A gap too large for
# the encoding is stored as GAP_ESCAPE, its true value in `escapes` (in order); a posting outside the codes'
# range (tf >= 32 or len >= 1024 terms: longer than any passage the chunker makes; one of 110 million in the
# scale corpus) has code 0, its tf and len in `wide_tfs` and `wide_lens`.
TF_LIMIT, LEN_BITS, GAP_ESCAPE = 32, 10, 32767
_NARROW = f"(tf < {TF_LIMIT} AND len < {1 << LEN_BITS})"
_SHORT, _LONG, _INT = np.dtype(">i2"), np.dtype(">i8"), np.dtype(">i4")
_BLOCK_FIELDS = "base, n, gaps, codes, escapes, wide_tfs, wide_lens"
_BLOCK_COLUMNS = f"term_id, {_BLOCK_FIELDS}"


def _blocks_of(rows: str) -> str:
    """SELECT of one block per term (the columns of _BLOCK_COLUMNS) of `rows`: a relation, optionally with a
    WHERE clause, of (term_id, chunk_id, tf, len)."""
    return f"""SELECT term_id, min(chunk_id), count(*),
    string_agg(int2send(least(gap, {GAP_ESCAPE})::int2), ''::bytea ORDER BY chunk_id),
    string_agg(int2send((CASE WHEN {_NARROW} THEN (tf << {LEN_BITS}) | len ELSE 0 END)::int2), ''::bytea
               ORDER BY chunk_id),
    string_agg(int8send(gap), ''::bytea ORDER BY chunk_id) FILTER (WHERE gap >= {GAP_ESCAPE}),
    string_agg(int4send(tf), ''::bytea ORDER BY chunk_id) FILTER (WHERE NOT {_NARROW}),
    string_agg(int4send(len), ''::bytea ORDER BY chunk_id) FILTER (WHERE NOT {_NARROW})
FROM (
    SELECT term_id, chunk_id, tf, len,
           coalesce(chunk_id - lag(chunk_id) OVER (PARTITION BY term_id ORDER BY chunk_id), 0) AS gap
    FROM {rows}
) AS postings
GROUP BY term_id"""


# Rows a removal holds are skipped (no lock waits, no deadlock): the removal deletes them or the next pack moves them.
_MOVE_SQL = f"""
WITH moved AS (
    DELETE FROM search_postingdelta
    WHERE id IN (SELECT id FROM search_postingdelta FOR UPDATE SKIP LOCKED)
    RETURNING term_id, chunk_id, tf, len
)
INSERT INTO search_postingblock ({_BLOCK_COLUMNS})
{_blocks_of("moved")}
RETURNING n
"""

_REPACK_CANDIDATES_SQL = """
SELECT b.term_id FROM search_postingblock b JOIN search_term t ON t.id = b.term_id
GROUP BY b.term_id, t.df
HAVING count(*) > %(blocks)s OR sum(b.n) > (1 + %(stale)s) * t.df
ORDER BY b.term_id
"""


@dataclass
class PackResult:
    moved: int = 0  # postings moved from the delta into blocks
    repacked_terms: int = 0
    full: bool = False
    skipped: bool = False  # another pack held the lock
    seconds: float = 0.0

    def message(self) -> str:
        if self.skipped:
            return "another pack is running"
        what = "full pack" if self.full else f"{self.moved:,} postings packed"
        return f"{what}, {self.repacked_terms:,} terms repacked in {self.seconds:.1f} s"


def pending() -> bool:
    return PackPending.objects.exists()


def pending_mark() -> None:
    """For writers of `search_posting` rows that bypass `index_apply` (bulk loads): searches score the rows
    until the next pack, which is then a full one."""
    PackPending.objects.get_or_create(pk=1)


def postings_pack(*, full: bool = False) -> PackResult:
    """Move the delta into blocks and repack the terms that need it; `full` (or a pending database) repacks
    every term from the truth and clears the pending mark."""
    began = time.perf_counter()
    result = PackResult(full=full or pending())
    with _pack_lock() as held:
        if not held:
            return PackResult(skipped=True)
        if result.full:
            result.repacked_terms = _repack(None)
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = 0")
                cursor.execute(_MOVE_SQL)
                result.moved = sum(row[0] for row in cursor.fetchall())
                cursor.execute(_REPACK_CANDIDATES_SQL, {"blocks": BLOCKS_PER_TERM_MAX, "stale": STALE_SHARE_MAX})
                terms = [row[0] for row in cursor.fetchall()]
            if terms:
                result.repacked_terms = _repack(terms)
    result.seconds = time.perf_counter() - began
    return result


@contextlib.contextmanager
def _pack_lock() -> Iterator[bool]:
    """One pack at a time. A session lock, taken before the repack's transaction begins (whose snapshot then
    sees every earlier pack); inside a caller's transaction (tests), a transaction lock."""
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", _PACK_LOCK)
            yield cursor.fetchone()[0]
            return
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", _PACK_LOCK)
        if not cursor.fetchone()[0]:
            yield False
            return
        try:
            yield True
        finally:
            try:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", _PACK_LOCK)
            except Exception:  # the connection is gone, and the session lock with it: keep the first error
                logger.warning("postings pack: could not release its lock", exc_info=True)


def _repack(term_ids: list[int] | None) -> int:
    """Rewrite the blocks of `term_ids` (None: of every term) from the truth, in one snapshot: the delta rows
    of those terms that the snapshot sees go (their postings are in the new blocks), later ones stay."""
    for attempt in range(3):
        try:
            return _repack_once(term_ids)
        except OperationalError as error:  # a concurrent removal deleted a delta row we read: try again
            if attempt == 2 or getattr(error.__cause__, "sqlstate", None) != "40001":
                raise
            logger.info("postings repack: serialization conflict, retrying")
    raise AssertionError("unreachable")


def _repack_once(term_ids: list[int] | None) -> int:
    where = "" if term_ids is None else "WHERE term_id = ANY(%(terms)s)"
    params = {"terms": term_ids}
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # else (tests, one connection): this runs in the caller's transaction and snapshot, which is only
        # exact with no concurrent writer; the product always packs in a transaction of its own.
        cursor.execute("SET LOCAL statement_timeout = 0")  # a full pack of 1M passages takes ~40 s
        cursor.execute(f"DELETE FROM search_postingblock {where}", params)
        # Delta rows locked in id order, as removals lock them: the two wait for each other, never deadlock.
        cursor.execute(
            f"DELETE FROM search_postingdelta WHERE id IN "
            f"(SELECT id FROM search_postingdelta {where} ORDER BY id FOR UPDATE)",
            params,
        )
        cursor.execute(
            f"INSERT INTO search_postingblock ({_BLOCK_COLUMNS}) {_blocks_of(f'search_posting {where}')}",
            params,
        )
        repacked = max(cursor.rowcount, 0)
        if term_ids is None:
            cursor.execute("DELETE FROM search_packpending")
    return repacked


# --- reading ----------------------------------------------------------------------------------------------

_READ_SQL = f"""
WITH stats AS (
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1e-9) AS avgdl
    FROM search_indexstate WHERE id = 1
),
query_terms AS (
    SELECT t.id, q.qtf, t.df FROM unnest(%(terms)s::text[], %(qtf)s::int[]) AS q(text, qtf)
    JOIN search_term t ON t.text = q.text
    WHERE t.df > 0
)
SELECT qt.qtf, qt.df, s.n, s.avgdl, b.base, b.n, b.gaps, b.codes, b.escapes, b.wide_tfs, b.wide_lens, qt.id
FROM query_terms qt CROSS JOIN stats s JOIN search_postingblock b ON b.term_id = qt.id
UNION ALL
SELECT qt.qtf, qt.df, s.n, s.avgdl, d.base, d.n, d.gaps, d.codes, d.escapes, d.wide_tfs, d.wide_lens, qt.id
FROM query_terms qt CROSS JOIN stats s
CROSS JOIN LATERAL ({_blocks_of("search_postingdelta WHERE term_id = qt.id")}) AS d(term_id, {_BLOCK_FIELDS})
ORDER BY 12
"""


def scores(terms: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, BM25 scores) of every chunk with a posting of `terms` (term -> frequency in the query),
    chunks deleted since their postings were packed included. The same Okapi BM25 as the SQL leg."""
    texts = sorted(terms)
    connection.ensure_connection()
    # Binary results: Django's cursors bind client-side and receive bytea as hex text, which took two thirds
    # of the read at a million passages (69 against 20 ms at the median).
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_READ_SQL, {"terms": texts, "qtf": [terms[text] for text in texts]}, binary=True)
        rows = cursor.fetchall()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    k1, b = float(settings.KB_BM25_K1), float(settings.KB_BM25_B)
    avgdl = rows[0][3]  # one figure for every row
    saturation = _saturation_by_code(k1, b, avgdl)
    total = sum(row[5] for row in rows)
    chunk_ids, weights = np.empty(total, dtype=np.int64), np.empty(total)
    at = 0
    for qtf, df, n, _avgdl, base, count, gaps, codes, escapes, wide_tfs, wide_lens, _term in rows:
        # qtf * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avgdl)): the factor after the saturation
        factor = qtf * np.log(1 + (n - df + 0.5) / (df + 0.5)) * (k1 + 1)
        ids, end = chunk_ids[at : at + count], at + count
        ids[:] = np.frombuffer(gaps, dtype=_SHORT)
        if escapes is not None:
            ids[ids == GAP_ESCAPE] = np.frombuffer(escapes, dtype=_LONG)
        ids[0] = base  # its gap is 0
        np.cumsum(ids, out=ids)
        code = np.frombuffer(codes, dtype=_SHORT)
        # "clip": every code indexes the table (0..32767); the default mode buffers the output (3x slower)
        np.take(saturation * factor, code, out=weights[at:end], mode="clip")
        if wide_tfs is not None:
            tf, lens = (np.frombuffer(wide, dtype=_INT).astype(np.float64) for wide in (wide_tfs, wide_lens))
            weights[at + np.flatnonzero(code == 0)] = _saturation(tf, lens, k1, b, avgdl) * factor
        at = end
    return _sum_by_chunk(chunk_ids, weights)


def _saturation(tf: np.ndarray, lens: np.ndarray, k1: float, b: float, avgdl: float) -> np.ndarray:
    """tf / (tf + k1 * (1 - b + b * len / avgdl)), float64: the one expression both kinds of posting are scored by."""
    return tf / (lens * (k1 * b / avgdl) + k1 * (1 - b) + tf)


def _saturation_by_code(k1: float, b: float, avgdl: float) -> np.ndarray:
    """The saturation of every code tf << 10 | len (code 0, tf 0: 0)."""
    codes = np.arange(TF_LIMIT << LEN_BITS)
    return _saturation(
        (codes >> LEN_BITS).astype(np.float64), (codes & ((1 << LEN_BITS) - 1)).astype(np.float64), k1, b, avgdl
    )


def _sum_by_chunk(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids ascending, the sum of their weights)."""
    low, high = int(ids.min()), int(ids.max())
    if high - low < max(4 * len(ids), 1 << 20):  # a dense range (the usual case): sum by position
        base = low if low > len(ids) else 0  # subtracting costs a pass: only when it saves a large array
        totals = np.bincount(ids - base if base else ids, weights=weights)
        present = np.flatnonzero(totals)  # every posting weighs more than 0: idf > 0, tf >= 1
        return present + base, totals[present]
    chunk_ids, inverse = np.unique(ids, return_inverse=True)
    return chunk_ids, np.bincount(inverse, weights=weights)


def ranked(chunk_ids: np.ndarray, values: np.ndarray, top: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The `top` (None: all) highest values, by value descending then chunk id, as the SQL leg orders them."""
    if top is not None and top < len(values):
        cut = np.partition(-values, top - 1)[top - 1]
        keep = -values <= cut  # the top, with every tie of the last place
        chunk_ids, values = chunk_ids[keep], values[keep]
    order = np.lexsort((chunk_ids, -values))
    if top is not None:
        order = order[:top]
    return chunk_ids[order], values[order]
