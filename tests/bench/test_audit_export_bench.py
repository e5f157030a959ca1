"""Audit export of 100k events: rows per second and memory, which must stay flat with the export's size.

`make bench` runs it (marker `bench`); results go to var/bench/audit_export.json. The chain is written with
COPY (valid hashes, exchange events of ~2.5 KB like real ones: eight passages, attempts, citations, a
600-character answer), then exported through the same stream the command and the API use. Memory is
measured twice: Python's allocations (tracemalloc peak) and the process's resident size (sampled every
10 ms), for 10k and for 100k events; a streamed export needs the same memory for both. Verification of the
whole chain is timed too (it sets KB_AUDIT_VERIFY_INTERVAL_S's cost).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.db import connection

from kb.audit import chain, services
from kb.audit.filters import AuditFilters

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

EVENTS = 100_000
SMALL = 10_000
SEED = 20261124
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "audit_export.json"
TRACED = 40_000  # events exported under tracemalloc (100k would take minutes under it)
# A streamed export's memory does not grow with its size: a larger export may take at most this much more
# than 10k events (Python allocations; resident size, which also moves with the allocator's arenas).
MAX_GROWTH_MB = 2.0
MAX_RSS_GROWTH_MB = 16.0
WORDS = "the hotel limit per night in amsterdam is euros book through travel desk company rate applies".split()  # noqa: SIM905


def _exchange(rng: random.Random, n: int) -> dict:
    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return {
        "exchange_id": n,
        "time": "2026-01-01T00:00:00.000000+00:00",
        "conversation_id": n,
        "request_id": f"{n:032x}",
        "question": text(12) + "?",
        "search_query": text(12),
        "guard": [{"guard": "pii", "action": "allow", "score": None, "reason": "", "details": {}}],
        "passages": [
            {
                "n": i,
                "chunk_id": n * 8 + i,
                "document_id": 1 + (n + i) % 500,
                "document_version": 1,
                "vector_rank": i,
                "bm25_rank": 9 - i,
                "fused_score": round(0.033 - i * 0.001, 6),
                "similarity": round(0.8 - i * 0.03, 4),
                "bm25_score": round(9.5 - i, 4),
            }
            for i in range(1, 9)
        ],
        "evidence_score": 0.71,
        "prompt_version": "answer-v1@eaf164b3ea70",
        "chain": ["anthropic:claude-sonnet-5-5", "anthropic:claude-haiku-5-5", "extractive"],
        "model": "anthropic:claude-sonnet-5-5",
        "attempts": [{"link": "anthropic:claude-sonnet-5-5", "attempt": 1, "outcome": "ok", "reason": "", "ms": 812.4}],
        "fallback_used": False,
        "fallback_reasons": [],
        "cache": {"kind": "miss", "nearest_similarity": 0.42},
        "outcome": rng.choice(["answered", "answered", "answered", "refused", "cached"]),
        "refused": False,
        "refusal_reason": "",
        "answer": text(100) + ' "quoted", comma\nnew line [1] [2]',
        "citations": [
            {"n": 1, "document_id": 1 + n % 500, "title": "Travel policy", "heading": "Hotels", "quote": text(20)},
            {"n": 2, "document_id": 2 + n % 500, "title": "Expenses", "heading": "Limits", "quote": text(20)},
        ],
        "grounding": [{"sentence": 1, "cites": [1], "support": 0.8}],
        "notices": [],
        "usage": {"input_tokens": 2400, "output_tokens": 180, "cost_usd": 0.0099},
        "cost_usd": 0.0099,
        "latency": {
            "begin_ms": 3.1,
            "embed_ms": 7.2,
            "retrieval_ms": 14.9,
            "first_token_ms": 640.2,
            "total_ms": 1800.5,
        },
        "latency_ms": 1800.5,
        "error": "",
    }


def _write_chain(count: int) -> None:
    """Append `count` exchange events after the current head, with COPY."""
    rng = random.Random(SEED)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 0")  # one COPY of every row, fed by Python hashing
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", services.CHAIN_LOCK)
        cursor.execute("SELECT seq, hash FROM audit_auditevent ORDER BY seq DESC LIMIT 1")
        head = cursor.fetchone()
    seq, prev = head if head else (0, chain.GENESIS)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    columns = "seq, kind, created_at, actor_id, actor_username, exchange_id, document_ids, data, prev_hash, hash"
    with connection.connection.cursor() as raw, raw.copy(f"COPY audit_auditevent ({columns}) FROM STDIN") as copy:
        for n in range(count):
            seq += 1
            data = _exchange(rng, n)
            documents = sorted({p["document_id"] for p in data["passages"]})
            content = chain.content_of(
                seq=seq,
                kind="exchange",
                created_at=start + dt.timedelta(microseconds=n * 500),
                actor_id=1 + n % 50,
                actor_username=f"employee{n % 50}",
                exchange_id=n,
                document_ids=documents,
                data=data,
            )
            digest = chain.event_hash(prev, content)
            copy.write_row(
                [
                    seq,
                    "exchange",
                    content["created_at"],
                    content["actor_id"],
                    content["actor_username"],
                    n,
                    documents,
                    chain.canonical_json(data),
                    prev,
                    digest,
                ]
            )
            prev = digest


class _RssSampler:
    """The process's resident memory, sampled every 10 ms while a block runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.start = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _export(format: str, through: int, path: Path, *, trace: bool) -> dict:
    stream = services.audit_export_begin(filters=AuditFilters(), format=format, via="bench")
    stream.export_seq = through + 1  # the first `through` events, whatever the bench recorded since
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with _RssSampler() as rss, path.open("wb") as handle:
        for chunk in stream:
            handle.write(chunk)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if trace:
        tracemalloc.stop()
    assert stream.manifest is not None
    return {
        "rows": stream.manifest["rows"],
        "seconds": round(seconds, 2),
        "rows_per_s": round(stream.manifest["rows"] / seconds),
        "mb": round(stream.manifest["bytes"] / 2**20, 1),
        "tracemalloc_peak_mb": round(peak / 2**20, 2) if trace else None,
        "rss_growth_mb": round(rss.growth_mb, 1),
        "rss_peak_mb": round(rss.peak / 2**20),
    }


@pytest.fixture
def empty_log():
    """The chain starts at seq 1 (inside the test's transaction: everything comes back afterwards)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('kb.audit_purge', 'on', true)")
        cursor.execute("DELETE FROM audit_auditevent")
        cursor.execute("SELECT set_config('kb.audit_purge', 'off', true)")
        cursor.execute("DELETE FROM audit_chaincheck")


@pytest.mark.timeout(1800)
def test_a_100k_event_export_streams_in_flat_memory(empty_log, tmp_path):
    started = time.perf_counter()
    _write_chain(EVENTS)
    build_s = time.perf_counter() - started
    results: dict = {"events": EVENTS, "build_s": round(build_s, 1)}
    # First-use allocations (imports, the cursor's first full batch) are not the export's.
    _export("csv", 5000, tmp_path / "warm-up.csv", trace=False)
    for format in ("csv", "jsonl"):
        # Speed and resident memory for 10k and 100k; Python's own allocations (tracemalloc, which slows
        # every allocation ~10x) for 10k and TRACED events.
        small = _export(format, SMALL, tmp_path / f"small.{format}", trace=False)
        large = _export(format, EVENTS, tmp_path / f"large.{format}", trace=False)
        traced_small = _export(format, SMALL, tmp_path / f"traced-small.{format}", trace=True)
        traced_large = _export(format, TRACED, tmp_path / f"traced-large.{format}", trace=True)
        assert large["rows"] == EVENTS and small["rows"] == SMALL and traced_large["rows"] == TRACED
        results[format] = {
            "10k": small,
            "100k": large,
            "traced_10k": traced_small,
            f"traced_{TRACED // 1000}k": traced_large,
        }
        growth = traced_large["tracemalloc_peak_mb"] - traced_small["tracemalloc_peak_mb"]
        assert growth < MAX_GROWTH_MB, f"{format}: Python memory grew {growth:.1f} MB with {TRACED - SMALL} more events"
        assert large["rss_growth_mb"] < small["rss_growth_mb"] + MAX_RSS_GROWTH_MB, results[format]

    started = time.perf_counter()
    report = services.chain_verify(triggered_by="bench")
    verify_s = time.perf_counter() - started
    assert report.ok and report.rows >= EVENTS
    results["verify"] = {
        "rows": report.rows,
        "seconds": round(verify_s, 2),
        "rows_per_s": round(report.rows / verify_s),
    }

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
