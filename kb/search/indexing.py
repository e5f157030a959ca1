"""Writes to the keyword index, always inside the caller's transaction (the one that writes the chunks),
so that a chunk is never in one leg of search and missing from the other. New postings are written twice:
as rows of `search_posting` (the truth) and into the delta that `packing.postings_pack` moves into blocks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from django.db import connection, transaction


def index_apply(*, add: Sequence[tuple[int, Counter[str]]] = (), remove: Sequence[int] = ()) -> None:
    """Add postings for (chunk_id, term frequencies) pairs and remove those of `remove` chunk ids.

    Document frequencies change by one combined delta, applied to terms in text order: concurrent
    ingestions then lock terms in the same order and cannot deadlock on them. The statistics row is
    locked last, for the same reason.
    """
    if not add and not remove:
        return
    assert transaction.get_connection().in_atomic_block, "index_apply must run inside the chunks' transaction"
    delta: Counter[str] = Counter()
    removed_length = 0
    with connection.cursor() as cursor:
        if remove:
            cursor.execute(
                """
                SELECT t.text, count(*) FROM search_posting p JOIN search_term t ON t.id = p.term_id
                WHERE p.chunk_id = ANY(%s) GROUP BY t.text
                """,
                [list(remove)],
            )
            for text, count in cursor.fetchall():
                delta[text] -= count
            cursor.execute(
                "SELECT coalesce(sum(len), 0) FROM (SELECT DISTINCT chunk_id, len FROM search_posting "
                "WHERE chunk_id = ANY(%s)) AS c",
                [list(remove)],
            )
            removed_length = cursor.fetchone()[0]
            cursor.execute("DELETE FROM search_posting WHERE chunk_id = ANY(%s)", [list(remove)])
            # Postings already packed stay in their blocks until the term is repacked: the chunks go in
            # this transaction too, and the BM25 leg drops chunks that no longer exist.
            # Locked in id order, as a repack locks them (`packing._repack_once`): no deadlock between the two.
            cursor.execute(
                "DELETE FROM search_postingdelta WHERE id IN "
                "(SELECT id FROM search_postingdelta WHERE chunk_id = ANY(%s) ORDER BY id FOR UPDATE)",
                [list(remove)],
            )
        added_terms: set[str] = set()
        for _, terms in add:
            delta.update(terms.keys())
            added_terms.update(terms.keys())
        term_ids: dict[str, int] = {}
        # Added terms go through the upsert even when their net change is zero: it returns their ids.
        changed = sorted(added_terms | {text for text, change in delta.items() if change})
        if changed:
            cursor.execute(
                """
                INSERT INTO search_term (text, df)
                SELECT text, df FROM unnest(%s::text[], %s::int[]) AS d(text, df) ORDER BY text
                ON CONFLICT (text) DO UPDATE SET df = search_term.df + EXCLUDED.df
                RETURNING id, text
                """,
                [changed, [delta[text] for text in changed]],
            )
            term_ids.update({text: term_id for term_id, text in cursor.fetchall()})
        added_length = 0
        if add:
            term_col, chunk_col, tf_col, len_col = [], [], [], []
            for chunk_id, terms in add:
                length = sum(terms.values())
                added_length += length
                for text, tf in terms.items():
                    term_col.append(term_ids[text])
                    chunk_col.append(chunk_id)
                    tf_col.append(tf)
                    len_col.append(length)
            for table in ("search_posting", "search_postingdelta"):  # the truth, and the pack's queue
                cursor.execute(
                    f"INSERT INTO {table} (term_id, chunk_id, tf, len) "
                    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::int[])",
                    [term_col, chunk_col, tf_col, len_col],
                )
        _state_change(cursor, chunks=len(add) - len(remove), length=added_length - removed_length)


def index_version_bump() -> None:
    """Mark the index changed (access groups, deletions): answer caches keyed by the version miss."""
    with connection.cursor() as cursor:
        _state_change(cursor, chunks=0, length=0)


def _state_change(cursor, *, chunks: int, length: int) -> None:
    # An upsert, so that the statistics row is there even after a database was emptied (test flushes).
    cursor.execute(
        """
        INSERT INTO search_indexstate (id, chunk_count, total_length, version) VALUES (1, %s, %s, 1)
        ON CONFLICT (id) DO UPDATE SET chunk_count = search_indexstate.chunk_count + EXCLUDED.chunk_count,
            total_length = search_indexstate.total_length + EXCLUDED.total_length,
            version = search_indexstate.version + 1
        """,
        [chunks, length],
    )
