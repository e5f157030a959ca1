"""Ingestion throughput through a real worker, next to the embedding model's own throughput on the same
text in the same run (target: >= 90%), and the worker's peak memory. Results: var/bench/ingest.json."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.core.files.base import ContentFile

from ingest import services
from ingest.chunker import chunk_document
from ingest.models import Document, DocumentStatus
from ingest.parsers import parse
from kb.search import embeddings

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

SCIFACT = Path(settings.BASE_DIR).parent / "shared" / "eval" / "scifact" / "corpus.jsonl"
DOCUMENTS = 40
ABSTRACTS_PER_DOCUMENT = 10


def _corpus() -> list[tuple[str, bytes]]:
    """Markdown documents of ten scientific abstracts each (real English prose), one section per abstract."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is missing: the benchmark reads real prose from ../shared/eval/scifact")
    rows = []
    with SCIFACT.open() as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["text"].split()) > 120:
                rows.append(row)
            if len(rows) == DOCUMENTS * ABSTRACTS_PER_DOCUMENT:
                break
    documents = []
    for d in range(DOCUMENTS):
        sections = rows[d * ABSTRACTS_PER_DOCUMENT : (d + 1) * ABSTRACTS_PER_DOCUMENT]
        body = "\n\n".join(f"## {row['title']}\n\n{row['text']}" for row in sections)
        documents.append((f"bench-{d:03}.md", f"# Collection {d}\n\n{body}\n".encode()))
    return documents


class PeakMemory:
    """Samples the resident memory of a process and its children (the prefork pool) every 100 ms."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                total = self.process.memory_info().rss + sum(
                    child.memory_info().rss for child in self.process.children(recursive=True)
                )
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_ingestion_throughput_against_the_embedding_model(celery_worker):
    corpus = _corpus()
    # The embedding model alone, on exactly the passages the pipeline will embed.
    inputs = []
    for name, data in corpus:
        parsed = parse(data, "text/markdown")
        title = parsed.title or name
        drafts = chunk_document(
            parsed,
            target_tokens=settings.KB_CHUNK_TARGET_TOKENS,
            max_tokens=settings.KB_CHUNK_MAX_TOKENS,
            overlap_tokens=settings.KB_CHUNK_OVERLAP_TOKENS,
        )
        inputs += [services.indexed_text(title, d.text, d.heading_path) for d in drafts]
    embeddings.embed(inputs[:64])  # load and warm up
    started = time.perf_counter()
    embeddings.embed(inputs)
    model_seconds = time.perf_counter() - started
    model_rate = len(inputs) / model_seconds

    # The worker warms up on one small document first, so model loading is not counted.
    warm = services.document_upload(source=ContentFile(b"# Warm\n\nWarm up.\n", name="warm.md"), filename="warm.md")
    _wait_ready([warm.document.pk], celery_worker)

    with PeakMemory(celery_worker.process.pid) as memory:
        started = time.perf_counter()
        ids = []
        for name, data in corpus:
            result = services.document_upload(source=ContentFile(data, name=name), filename=name)
            assert result.accepted, result.message
            ids.append(result.document.pk)
        _wait_ready(ids, celery_worker)
        pipeline_seconds = time.perf_counter() - started
    chunks = sum(Document.objects.filter(pk__in=ids).values_list("chunks_total", flat=True))
    pipeline_rate = chunks / pipeline_seconds

    # Where a document's time goes, from the worker's own log lines ("document 7 indexed: ...; embed 410 ms").
    steps: dict[str, list[float]] = {}
    wanted = {str(i) for i in ids}
    for match in re.finditer(r"document (\d+) indexed: \d+ chunks; (.+)", celery_worker.output()):
        if match.group(1) in wanted:
            for part in match.group(2).split(", "):
                step, ms = part.rsplit(" ", 2)[0], float(part.rsplit(" ", 2)[1])
                steps.setdefault(step, []).append(ms)
    result = {
        "documents": len(ids),
        "chunks": chunks,
        "model_passages": len(inputs),
        "model_passages_per_s": round(model_rate, 2),
        "pipeline_chunks_per_s": round(pipeline_rate, 2),
        "ratio": round(pipeline_rate / model_rate, 3),
        "pipeline_seconds": round(pipeline_seconds, 1),
        "worker_peak_rss_mb": round(memory.peak / 2**20, 1),
        "batch_size": settings.KB_EMBEDDING_BATCH_SIZE,
        "max_seq_length": settings.KB_EMBEDDING_MAX_SEQ_LENGTH,
        "torch_threads": settings.KB_TORCH_THREADS,
        "mean_ms_per_document": {step: round(sum(v) / len(v), 1) for step, v in steps.items()},
        "mean_task_gap_ms": None,
    }
    busy = sum(sum(v) for v in steps.values()) / 1000
    if steps:
        # Time the worker spent outside document processing (hand-offs, polling), per document.
        result["mean_task_gap_ms"] = round((pipeline_seconds - busy) * 1000 / len(ids), 1)
    out = Path(settings.BASE_DIR) / "var" / "bench" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\ningestion benchmark:", json.dumps(result))
    assert chunks == len(inputs)


def _wait_ready(ids: list[int], worker, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = set(Document.objects.filter(pk__in=ids).values_list("status", flat=True))
        if states <= {DocumentStatus.READY, DocumentStatus.FAILED}:
            assert states == {DocumentStatus.READY}, worker.output()[-2000:]
            return
        time.sleep(0.25)
    pytest.fail("ingestion did not finish in time\n" + worker.output()[-2000:])
