"""Search at 100k, 300k and 1M passages: latency, recall, agreement with exact BM25, sizes, memory.

`make bench` runs it (marker `bench`). The corpus (kb/evaluation/scale.py: SciFact sentences recombined into
passages, vectors from the model's sentence vectors) is generated once under var/scale/ and loaded once into
a database per size (`kb_scale_<N>`); later runs only measure. A first build of 1M passages took 30 min on
2 idle cores (loading 18, indexes 8) and measuring it 35 min; KB_SCALE_PASSAGES picks the largest size
(default 1,000,000; 100000 for a quick run). Results go to var/bench/scale.json and scale.html (a table per
size and a log-log plot).
The goals are asserted at the largest size only: smaller sizes are there to show how each figure grows. From
1M on, latency is measured on every third query (103) and recall on every ninth (35): scale.query_every.
"""

from __future__ import annotations

import os
import time

import pytest

from kb.evaluation import scale

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

SIZES = (100_000, 300_000, 1_000_000)
TARGET_HYBRID_P95_MS = 100.0  # without the query embedding (issue 22)
TARGET_VECTOR_RECALL_AT_10 = 0.95


@pytest.mark.timeout(6 * 3600)
def test_search_at_a_million_passages(capsys):
    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[scale bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    if not (scale.SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"{scale.SCIFACT}/corpus.jsonl is missing: the scale corpus is made from SciFact's sentences")
    largest = int(os.environ.get("KB_SCALE_PASSAGES", "1000000"))
    began = time.perf_counter()
    result = {}
    for passages in [size for size in SIZES if size < largest] + [largest]:
        log(f"{passages:,} passages: building (skipped when cached) then measuring")
        scale.database_build(passages, log)
        result = scale.measure(passages, log)
        scale.report_write(scale.bench_dir(), result)
        employee = result["employee"]
        log(
            f"{passages:,}: hybrid p50/p95 {employee['hybrid_search_ms']} (with embedding "
            f"{employee['hybrid_with_embedding_ms']}), vector recall@10 {employee['vector_recall_at_10']}, "
            f"BM25 top-10 identical {employee['bm25_top10_identical']}"
        )
    log(f"scale bench took {time.perf_counter() - began:.0f} s; results in var/bench/scale.json and scale.html")
    for label in ("employee", "admin"):
        figures = result[label]
        assert figures["hits_short"] == 0
        assert figures["hybrid_search_ms"]["p95_ms"] <= TARGET_HYBRID_P95_MS, label
        assert figures["vector_recall_at_10"] >= TARGET_VECTOR_RECALL_AT_10, label
        assert figures["bm25_top10_identical"] == 1.0, label
