"""Packing the keyword postings while documents are indexed and removed in other transactions: every posting
is scored exactly once, whichever commits first (real PostgreSQL, one connection per thread)."""

from __future__ import annotations

import io
import logging
import threading
from collections import Counter

import pytest
from django.db import connection, transaction

from ingest.models import Chunk
from kb.search import packing, tasks
from kb.search.analyzer import analyze
from kb.search.indexing import index_apply
from kb.search.models import PostingBlock, PostingDelta
from kb.search.retrieval import ReadScope, bm25_leg, bm25_leg_rows
from tests.search.conftest import ingest_file

pytestmark = pytest.mark.django_db(transaction=True)
QUERY = "quokka ledger audit"


def _terms() -> Counter[str]:
    return Counter(analyze([QUERY])[0])


def _assert_exact() -> list[int]:
    scope = ReadScope.all_documents()
    packed = bm25_leg(_terms(), scope, 50)
    rows = bm25_leg_rows(_terms(), scope, 50)
    assert [(hit.chunk_id, round(hit.value, 9)) for hit in packed] == [
        (hit.chunk_id, round(hit.value, 9)) for hit in rows
    ]
    return [hit.chunk_id for hit in packed]


def _in_thread(target, *args) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run():
        try:
            target(*args)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_postings_committed_during_a_pack_stay_in_the_delta_and_count_once():
    ingest_file("# Quokka ledger\n\nThe quokka ledger audit is monthly.\n", "first.md")
    written, commit = threading.Event(), threading.Event()

    def index_slowly():
        with transaction.atomic():
            ingest_file("# Quokka audit\n\nA second quokka audit note.\n", "second.md")
            written.set()
            assert commit.wait(30)

    thread, errors = _in_thread(index_slowly)
    assert written.wait(60)
    result = packing.postings_pack()  # does not wait for the open transaction
    assert result.moved > 0 and not result.skipped
    commit.set()
    thread.join(60)
    assert not errors, errors
    assert PostingDelta.objects.filter(chunk__document__filename="second.md").exists()
    assert len(_assert_exact()) == 2
    assert tasks.postings_pack() > 0  # beat's task moves them
    assert not PostingDelta.objects.exists()
    assert len(_assert_exact()) == 2


def test_a_removal_committed_during_a_full_repack_is_retried_and_leaves_no_trace(caplog):
    caplog.set_level(logging.INFO, logger="kb.search.packing")
    ingest_file("# Quokka ledger\n\nThe quokka ledger audit is monthly.\n", "first.md")
    packing.postings_pack(full=True)
    second = ingest_file("# Quokka audit\n\nA second quokka audit note.\n", "second.md")  # in the delta
    gone = list(Chunk.objects.filter(document=second).values_list("id", flat=True))
    removed, commit = threading.Event(), threading.Event()

    def remove_slowly():
        with transaction.atomic():
            index_apply(remove=gone)
            Chunk.objects.filter(id__in=gone).delete()
            removed.set()
            assert commit.wait(30)

    remover, remover_errors = _in_thread(remove_slowly)
    assert removed.wait(60)
    results: list[packing.PackResult] = []
    packer, packer_errors = _in_thread(lambda: results.append(packing.postings_pack(full=True)))
    packer.join(1.0)
    assert packer.is_alive()  # waiting for the removal's row locks on the delta
    commit.set()
    remover.join(60)
    packer.join(60)
    assert not remover_errors and not packer_errors, (remover_errors, packer_errors)
    assert results[0].full and results[0].repacked_terms > 0
    assert "serialization conflict, retrying" in caplog.text  # its first snapshot still saw the delta rows
    assert not PostingDelta.objects.exists()
    assert not set(_assert_exact()) & set(gone)
    ledger_blocks = PostingBlock.objects.filter(term__text="quokka")
    assert sum(block.n for block in ledger_blocks) == 1  # repacked from the rows: no trace of the removed chunk


def test_a_second_pack_while_one_runs_leaves_at_once():
    with connection.cursor() as cursor:
        held, release = threading.Event(), threading.Event()

        def hold_lock():
            with connection.cursor() as other:
                other.execute("SELECT pg_advisory_lock(%s, %s)", packing._PACK_LOCK)
                held.set()
                release.wait(30)
                other.execute("SELECT pg_advisory_unlock(%s, %s)", packing._PACK_LOCK)

        thread, errors = _in_thread(hold_lock)
        assert held.wait(30)
        assert packing.postings_pack().skipped
        release.set()
        thread.join(30)
        assert not errors
        cursor.execute("SELECT 1")
    assert not packing.postings_pack().skipped


def test_reindex_postings_repacks_every_term_now():
    from django.core.management import call_command

    ingest_file("# Quokka ledger\n\nThe quokka ledger audit is monthly.\n", "first.md")
    assert PostingDelta.objects.exists()
    out = io.StringIO()
    call_command("reindex", "--postings", stdout=out)
    assert "full pack" in out.getvalue() and "terms repacked" in out.getvalue()
    assert not PostingDelta.objects.exists() and PostingBlock.objects.filter(term__text="quokka").exists()
    assert len(_assert_exact()) == 1
