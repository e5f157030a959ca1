"""Ingestion throughput through a real worker, next to the embedding model's own throughput on the same
text in the same run (target: >= 90%), and the worker's peak memory. Results: var/bench/ingest.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
from kb.celery import worker_torch_threads
from kb.search import embeddings
from tests.conftest import Worker, _purge_embedded_queue, subprocess_env

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


def _model_alone(inputs: list[str], processes: int, threads: int, env: dict[str, str], folder: Path) -> float:
    """Passages per second of the embedding model alone, laid out as the worker pool: `processes` processes of
    `threads` torch threads, each embedding its share in one call, all started at the same moment."""
    passages = folder / "passages.json"
    passages.write_text(json.dumps(inputs))
    start_at = time.time() + 20 + 5 * processes  # after every process has loaded and warmed its model
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.embedding_rate",
                str(passages),
                str(i),
                str(processes),
                str(threads),
                str(start_at),
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    finished = []
    for run in runs:
        out, _ = run.communicate(timeout=900)
        assert run.returncode == 0, "the model-alone measurement failed"
        finished.append(json.loads(out.strip().splitlines()[-1])["finished_at"])
    assert time.time() > start_at and min(finished) > start_at, "a process was not ready at the start"
    return len(inputs) / (max(finished) - start_at)


def _passages_of(corpus: list[tuple[str, bytes]]) -> list[str]:
    """Exactly the texts the pipeline will embed for `corpus` (Markdown files): each passage with its context."""
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
    return inputs


def test_ingestion_throughput_against_the_embedding_model(test_database_url, tmp_path):
    corpus = _corpus()
    inputs = _passages_of(corpus)
    # In this process, with KB_TORCH_THREADS (for reference: what one process makes of all the cores)...
    embeddings.embed(inputs[:64])  # load and warm up
    started = time.perf_counter()
    embeddings.embed(inputs)
    one_process_rate = len(inputs) / (time.perf_counter() - started)
    # ...and laid out as the worker runs (the figure the pipeline is measured against).
    processes = settings.KB_WORKER_CONCURRENCY
    threads = worker_torch_threads(processes)
    env = subprocess_env(test_database_url, KB_DB_POOL_SIZE="0")
    model_rate = _model_alone(inputs, processes, threads, env, tmp_path)

    result = _through_a_worker(corpus, env, processes, tmp_path)
    result.update(
        {
            "model_passages": len(inputs),
            "model_passages_per_s": round(model_rate, 2),
            "ratio": round(result["pipeline_chunks_per_s"] / model_rate, 3),
            "model_one_process_passages_per_s": round(one_process_rate, 2),
            "worker_processes": processes,
            "torch_threads_per_worker_process": threads,
            "batch_size": settings.KB_EMBEDDING_BATCH_SIZE,
            "max_seq_length": settings.KB_EMBEDDING_MAX_SEQ_LENGTH,
        }
    )
    out = Path(settings.BASE_DIR) / "var" / "bench" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\ningestion benchmark:", json.dumps(result))
    assert result["chunks"] == len(inputs)


def _through_a_worker(corpus: list[tuple[str, bytes]], env: dict[str, str], processes: int, folder: Path) -> dict:
    """`corpus` indexed by a fresh worker of `processes` processes on an empty queue: `_pipeline`'s figures."""
    _purge_embedded_queue()
    worker = Worker(env, folder / "worker.log", concurrency=processes)
    worker.start()
    try:
        return _pipeline(corpus, worker)
    finally:
        worker.stop()


def _pipeline(corpus: list[tuple[str, bytes]], worker: Worker) -> dict:
    # Every pool process loads its model as it starts (kb/celery.py); model loading is not counted.
    warm = services.document_upload(source=ContentFile(b"# Warm\n\nWarm up.\n", name="warm.md"), filename="warm.md")
    _wait_ready([warm.document.pk], worker)
    deadline = time.monotonic() + 120
    loaded = f"embedding model {embeddings.model_id()} loaded"
    while worker.output().count(loaded) < worker.concurrency and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # each process's first forward pass follows its loading

    with PeakMemory(worker.process.pid) as memory:
        started = time.perf_counter()
        ids = []
        with services.processing_sent_together():  # as `manage.py ingest FOLDER` and a multi-file upload do
            for name, data in corpus:
                result = services.document_upload(source=ContentFile(data, name=name), filename=name)
                assert result.accepted, result.message
                ids.append(result.document.pk)
        uploaded_seconds = time.perf_counter() - started
        _wait_ready(ids, worker)
        pipeline_seconds = time.perf_counter() - started
    chunks = sum(Document.objects.filter(pk__in=ids).values_list("chunks_total", flat=True))
    pipeline_rate = chunks / pipeline_seconds

    # Where a document's time goes, from the worker's own log lines ("document 7 indexed: ...; embed 410 ms").
    steps: dict[str, list[float]] = {}
    wanted = {str(i) for i in ids}
    for match in re.finditer(r"document (\d+) indexed: \d+ chunks; (.+)", worker.output()):
        if match.group(1) in wanted:
            for part in match.group(2).split(", "):
                step, ms = part.rsplit(" ", 2)[0], float(part.rsplit(" ", 2)[1])
                steps.setdefault(step, []).append(ms)
    result = {
        "documents": len(ids),
        "chunks": chunks,
        "pipeline_chunks_per_s": round(pipeline_rate, 2),
        "pipeline_seconds": round(pipeline_seconds, 1),
        "uploaded_after_s": round(uploaded_seconds, 1),  # the uploads share the two cores with the worker
        "worker_peak_rss_mb": round(memory.peak / 2**20, 1),
        "mean_ms_per_document": {step: round(sum(v) / len(v), 1) for step, v in steps.items()},
    }
    return result


def _wait_ready(ids: list[int], worker, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = set(Document.objects.filter(pk__in=ids).values_list("status", flat=True))
        if states <= {DocumentStatus.READY, DocumentStatus.FAILED}:
            assert states == {DocumentStatus.READY}, worker.output()[-2000:]
            return
        time.sleep(0.25)
    pytest.fail("ingestion did not finish in time\n" + worker.output()[-2000:])


def _small_documents(count: int) -> list[tuple[str, bytes]]:
    """SciFact as one Markdown file per abstract (title as heading), the first `count` of the corpus's 5,183."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is missing: the benchmark reads real prose from ../shared/eval/scifact")
    documents = []
    with SCIFACT.open() as handle:
        for line in handle:
            row = json.loads(line)
            documents.append((f"{row['_id']}.md", f"# {row['title']}\n\n{row['text']}\n".encode()))
            if len(documents) == count:
                break
    return documents


def test_ingestion_of_many_small_documents(test_database_url, tmp_path):
    """Many small files (KB_BENCH_SMALL_DOCUMENTS of SciFact's one-abstract files, all 5,183 by default): what a
    task, a transaction and an embedding call per document cost when each document has two or three passages."""
    count = int(os.environ.get("KB_BENCH_SMALL_DOCUMENTS", "5183"))
    corpus = _small_documents(count)
    processes = settings.KB_WORKER_CONCURRENCY
    env = subprocess_env(test_database_url, KB_DB_POOL_SIZE="0")
    # The model alone on the same passages, laid out as the worker pool: what is left for everything else.
    inputs = _passages_of(corpus)
    model_rate = _model_alone(inputs, processes, worker_torch_threads(processes), env, tmp_path)
    result = _through_a_worker(corpus, env, processes, tmp_path)
    result.update(
        {
            "model_passages_per_s": round(model_rate, 2),
            "ratio": round(result["pipeline_chunks_per_s"] / model_rate, 3),
            "files_per_s": round(result["documents"] / result["pipeline_seconds"], 2),
            "worker_processes": processes,
            "batch_documents": settings.KB_INGEST_BATCH_DOCUMENTS,
            "load_average": os.getloadavg(),
        }
    )
    out = Path(settings.BASE_DIR) / "var" / "bench" / "ingest_small_documents.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\nsmall documents:", json.dumps(result))
    assert result["documents"] == len(corpus)
    assert result["chunks"] == len(inputs)
