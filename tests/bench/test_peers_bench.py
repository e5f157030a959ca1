"""kb against the usual stack, side by side in one run on this machine. Results: var/bench/peers.json and .html.

The usual stack is LangChain's standard pipeline (tests/bench/peers/langchain_stack.py: recursive character
splitter, HuggingFaceEmbeddings with the same all-MiniLM-L6-v2, PGVector on the same PostgreSQL server, BM25Retriever
+ EnsembleRetriever for hybrid), installed in a bench-only venv (var/bench-env, made here when missing from
tests/bench/peers/requirements.txt; never a dependency of kb). In one run:

(a) BEIR SciFact as one Markdown file per abstract (title as `# heading`, abstract as body) through kb end to end:
    uploaded with ingest.services.document_upload, indexed by a real Celery worker, timed until every file is
    `ready`; then kb's hybrid search (with and without the query embedding), vector and BM25 on the 300 test
    claims, and nDCG@10;
(b) the same files through the LangChain stack (files to searchable, search, nDCG@10);
(c) the embedding model alone on kb's passages, laid out as the worker pool (test_ingest_bench._model_alone);
(d) the 40-document bench corpus of test_ingest_bench through both stacks;
(e) when a prebuilt scale corpus is there (kb.evaluation.scale's parts under KB_BENCH_SCALE_DIR, default
    var/scale), LangChain's search at 100k passages, loaded with PGVector.add_embeddings from its vectors.

KB_BENCH_PEERS_FILES=N runs on a sample (the documents judged for the test claims plus the first N others) to
develop quickly; unset, all 5,183 files (about 30 minutes on 2 idle cores).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from ingest.chunker import chunk_document
from ingest.models import Document
from ingest.parsers import parse
from ingest.services import indexed_text
from kb.celery import worker_torch_threads
from kb.evaluation import beir
from kb.search import embeddings
from kb.search.retrieval import ReadScope, search_in_scope
from tests.bench.test_ingest_bench import _corpus, _model_alone, _pipeline
from tests.conftest import Worker, _purge_embedded_queue, database_url_for, subprocess_env

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(settings.BASE_DIR)
SCIFACT = BASE_DIR.parent / "shared" / "eval" / "scifact"
PEERS = BASE_DIR / "tests" / "bench" / "peers"
REQUIREMENTS = PEERS / "requirements.txt"
BENCH_ENV = BASE_DIR / "var" / "bench-env"
BENCH_PYTHON = "python3.11"  # the only Python with a CPU torch 2.13.0 wheel here, as kb's own venv
TORCH = "torch==2.13.0"
OUT = BASE_DIR / "var" / "bench" / "peers.json"
LANGCHAIN_DATABASE = "peers_langchain"
SAMPLE = int(os.environ.get("KB_BENCH_PEERS_FILES", "0") or 0)
SCALE_DIR = Path(os.environ.get("KB_BENCH_SCALE_DIR", BASE_DIR / "var" / "scale"))
SCALE_PASSAGES = 100_000
SCALE_PART_SIZE = 10_000  # kb.evaluation.scale.PART_SIZE
# Passages kept after fusion, as in the LangChain script: ten distinct SciFact documents need ~25.
FUSED_DEPTH = 30
WARM_UP_QUERIES = 10
# The model-alone rate is a rate per passage: a spread-out share of kb's passages measures it in minutes.
MODEL_ALONE_MAX_PASSAGES = 2400


# --- the bench-only environment ---------------------------------------------------------------------------


def _bench_env() -> Path:
    """The venv's python, made (torch first, then the pinned rest, as kb's Makefile does) when missing or stale."""
    python = BENCH_ENV / "bin" / "python"
    marker = BENCH_ENV / ".installed"
    wanted = hashlib.sha256(f"{TORCH}\n{REQUIREMENTS.read_text()}".encode()).hexdigest()
    if python.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return python
    steps = [
        [BENCH_PYTHON, "-m", "venv", str(BENCH_ENV)],
        [str(python), "-m", "pip", "install", "--quiet", TORCH],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
    ]
    for step in steps:
        try:
            run = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"the bench-only environment {BENCH_ENV} could not be built ({' '.join(step)}): {exc}")
        if run.returncode != 0:
            tail = [line for line in run.stderr.splitlines() if "is ignored" not in line][-3:]
            pytest.skip(f"the bench-only environment {BENCH_ENV} could not be built ({' '.join(step)}): {tail}")
    marker.write_text(wanted + "\n")
    return python


def _langchain(python: Path, url: str, log, **options) -> dict:
    arguments = [str(python), str(PEERS / "langchain_stack.py"), "--database-url", url]
    for name, value in options.items():
        arguments += [f"--{name.replace('_', '-')}", str(value)]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO", "KB_", "PYTHONPATH"))}
    env["HF_HUB_OFFLINE"] = "1"
    log(f"LangChain: {' '.join(arguments[1:])}")
    run = subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=5400, check=False)
    assert run.returncode == 0, f"the LangChain stack failed:\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    log(f"LangChain: {json.dumps(result)}")
    return result


def _keep(stage: str, result: dict) -> None:
    """Each stage's figures as soon as it ends (var/bench/peers.partial.json): a run cut short keeps them."""
    partial = OUT.with_suffix(".partial.json")
    kept = json.loads(partial.read_text()) if partial.exists() else {}
    kept[stage] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": os.getloadavg(), **result}
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(kept, indent=2) + "\n")


# --- the corpus -------------------------------------------------------------------------------------------


def _scifact_files() -> tuple[list[tuple[str, bytes]], list[tuple[str, str, dict[str, int]]]]:
    """SciFact as (file name, Markdown) pairs, and the test claims with their judgements."""
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"{SCIFACT} is missing: the benchmark reads BEIR SciFact from ../shared/eval/scifact")
    texts = beir.queries_load(SCIFACT / "queries.jsonl")
    qrels = beir.qrels_load(SCIFACT / "qrels" / "test.tsv")
    claims = [(qid, texts[qid], relevant) for qid, relevant in qrels.items() if qid in texts]
    judged = {doc for relevant in qrels.values() for doc in relevant}
    files = []
    others = 0
    for doc in beir.corpus_load(SCIFACT / "corpus.jsonl"):
        if SAMPLE and doc.id not in judged:
            if others >= SAMPLE:
                continue
            others += 1
        files.append((f"{doc.id}.md", f"# {doc.title}\n\n{doc.text}\n".encode()))
    return files, claims


def _write(files: list[tuple[str, bytes]], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, data in files:
        (folder / name).write_bytes(data)
    return folder


def _kb_passages(files: list[tuple[str, bytes]]) -> list[str]:
    """Exactly the texts kb's pipeline embeds for these files."""
    inputs = []
    for name, data in files:
        parsed = parse(data, "text/markdown")
        drafts = chunk_document(
            parsed,
            target_tokens=settings.KB_CHUNK_TARGET_TOKENS,
            max_tokens=settings.KB_CHUNK_MAX_TOKENS,
            overlap_tokens=settings.KB_CHUNK_OVERLAP_TOKENS,
        )
        inputs += [indexed_text(parsed.title or name, d.text, d.heading_path) for d in drafts]
    return inputs


# --- kb's search ------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(beir.percentile(values, 0.95), 2)}


def _kb_search(claims: list[tuple[str, str, dict[str, int]]], names: set[str]) -> dict:
    """The claims through kb's search as the product runs it, on the documents just ingested."""
    scope = ReadScope.all_documents()
    stem_of = {pk: Path(name).stem for pk, name in Document.objects.values_list("id", "filename") if name in names}
    for _, text, _ in claims[:WARM_UP_QUERIES]:
        search_in_scope(text, scope, FUSED_DEPTH, mode="hybrid")
    kinds = ("hybrid", "hybrid_given_embedding", "vector_given_embedding", "bm25")
    timings: dict[str, list[float]] = {name: [] for name in kinds}
    ndcg: dict[str, list[float]] = {"hybrid": [], "vector": [], "bm25": []}
    for _, text, relevant in claims:
        # The whole path from text (the model embeds the query), then the legs given the query's vector (as the
        # answer pipeline calls it, having embedded the question for its semantic cache).
        vector = embeddings.embed([text])[0]
        runs = {
            "hybrid": search_in_scope(text, scope, FUSED_DEPTH, mode="hybrid"),
            "hybrid_given_embedding": search_in_scope(text, scope, FUSED_DEPTH, mode="hybrid", query_vector=vector),
            "vector_given_embedding": search_in_scope(text, scope, FUSED_DEPTH, mode="vector", query_vector=vector),
            "bm25": search_in_scope(text, scope, FUSED_DEPTH, mode="bm25"),
        }
        for name, result in runs.items():
            timings[name].append(result.timings.total_ms)
        for mode, name in (("hybrid", "hybrid"), ("vector", "vector_given_embedding"), ("bm25", "bm25")):
            ranking: list[str] = []
            for hit in runs[name].hits:
                stem = stem_of.get(hit.document_id)
                if stem is not None and stem not in ranking:
                    ranking.append(stem)
            ndcg[mode].append(beir.ndcg_at(ranking, relevant, 10))
    return {
        "queries": len(claims),
        "latency": {name: _summary(values) for name, values in timings.items()},
        "ndcg@10": {name: round(statistics.mean(values), 4) for name, values in ndcg.items()},
    }


# --- the run ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(4 * 3600)
def test_kb_against_the_langchain_stack(test_database_url, tmp_path, capsys):
    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[peers] {time.strftime('%H:%M:%S')} {message}", flush=True)

    files, claims = _scifact_files()
    bench40 = _corpus()
    python = _bench_env()
    started = time.time()
    load_before = os.getloadavg()
    scifact_dir = _write(files, tmp_path / "scifact")
    bench40_dir = _write(bench40, tmp_path / "bench40")

    # (c) the model alone on kb's passages, laid out as the worker pool.
    inputs = _kb_passages(files)
    share = inputs[:: max(1, len(inputs) // MODEL_ALONE_MAX_PASSAGES)]
    processes = settings.KB_WORKER_CONCURRENCY
    threads = worker_torch_threads(processes)
    env = subprocess_env(test_database_url, KB_DB_POOL_SIZE="0")
    log(f"model alone on {len(share)} of kb's {len(inputs)} passages ({processes} x {threads} threads)")
    model_rate = _model_alone(share, processes, threads, env, tmp_path)
    _keep("model_alone", {"passages": len(share), "passages_per_s": round(model_rate, 2)})

    # (a) and (d) kb end to end through a real worker; SciFact is searched before the bench corpus (the same
    # abstracts under other names) goes in.
    _purge_embedded_queue()
    worker = Worker(env, tmp_path / "worker.log", concurrency=processes)
    worker.start()
    try:
        log(f"kb: ingesting {len(files)} SciFact files")
        kb_scifact = _pipeline(files, worker)
        kb_scifact["files_per_s"] = round(kb_scifact["documents"] / kb_scifact["pipeline_seconds"], 2)
        _keep("kb_scifact", kb_scifact)
        log(f"kb: {json.dumps(kb_scifact)}; searching")
        kb_search = _kb_search(claims, {name for name, _ in files})
        _keep("kb_search", kb_search)
        log(f"kb: {json.dumps(kb_search)}")
        log(f"kb: ingesting the {len(bench40)}-document bench corpus")
        kb_bench40 = _pipeline(bench40, worker)
        _keep("kb_bench40", kb_bench40)
    finally:
        worker.stop()

    # (b) and (d) the LangChain stack on the same server, in a database of its own.
    beir.database_ensure(LANGCHAIN_DATABASE)
    url = database_url_for(LANGCHAIN_DATABASE)
    queries, qrels = SCIFACT / "queries.jsonl", SCIFACT / "qrels" / "test.tsv"
    lc_scifact = _langchain(python, url, log, files=scifact_dir, collection="scifact", queries=queries, qrels=qrels)
    _keep("langchain_scifact", lc_scifact)
    lc_bench40 = _langchain(python, url, log, files=bench40_dir, collection="bench40")
    _keep("langchain_bench40", lc_bench40)

    # (e) LangChain's search at 100k passages, when the scale corpus is built.
    lc_scale = None
    parts = SCALE_DIR / "parts"
    if all((parts / f"part-{n:05d}.npy").exists() for n in range(SCALE_PASSAGES // SCALE_PART_SIZE)):
        lc_scale = _langchain(
            python,
            url,
            log,
            scale_parts=parts,
            scale_passages=SCALE_PASSAGES,
            collection="scale",
            queries=queries,
            qrels=qrels,
        )
    else:
        log(f"no scale corpus of {SCALE_PASSAGES:,} passages under {parts}: the 100k comparison is left out")

    report = _report(
        files=files,
        claims=claims,
        inputs=inputs,
        share=share,
        model_rate=model_rate,
        processes=processes,
        threads=threads,
        kb_scifact=kb_scifact,
        kb_search=kb_search,
        kb_bench40=kb_bench40,
        lc_scifact=lc_scifact,
        lc_bench40=lc_bench40,
        lc_scale=lc_scale,
    )
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "run_minutes": round((time.time() - started) / 60, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    OUT.with_suffix(".html").write_text(_html(report))
    log(json.dumps(report["table"], indent=2))
    assert kb_scifact["documents"] == len(files)
    assert lc_scifact["ingest"]["files"] == len(files)
    assert kb_search["queries"] == lc_scifact["search"]["queries"] == len(claims)


def _report(**r) -> dict:
    kb, lc, search, lc_search = r["kb_scifact"], r["lc_scifact"]["ingest"], r["kb_search"], r["lc_scifact"]["search"]
    table = {
        "SciFact ingest, files to searchable (passages/s)": [
            kb["pipeline_chunks_per_s"],
            lc["passages_per_s"],
            round(r["model_rate"], 2),
        ],
        "SciFact ingest (files/s)": [kb["files_per_s"], lc["files_per_s"], None],
        "SciFact ingest (seconds)": [kb["pipeline_seconds"], lc["seconds"], None],
        "SciFact passages": [kb["chunks"], lc["passages"], len(r["inputs"])],
        "ingest peak RSS (MB)": [kb["worker_peak_rss_mb"], lc["peak_rss_mb"], None],
        "40-document corpus ingest (passages/s)": [
            r["kb_bench40"]["pipeline_chunks_per_s"],
            r["lc_bench40"]["ingest"]["passages_per_s"],
            None,
        ],
        "hybrid nDCG@10 (SciFact test)": [search["ndcg@10"]["hybrid"], lc_search["ndcg@10"]["hybrid"], None],
        "vector nDCG@10": [search["ndcg@10"]["vector"], lc_search["ndcg@10"]["vector"], None],
        "BM25 nDCG@10": [search["ndcg@10"]["bm25"], lc_search["ndcg@10"]["bm25"], None],
        "hybrid p50 / p95 ms, with query embedding": [
            _pair(search["latency"]["hybrid"]),
            _pair(lc_search["latency"]["hybrid"]),
            None,
        ],
        "hybrid p50 / p95 ms, query vector given": [_pair(search["latency"]["hybrid_given_embedding"]), None, None],
        "vector p50 / p95 ms, with query embedding": [None, _pair(lc_search["latency"]["vector"]), None],
        "vector p50 / p95 ms, query vector given": [
            _pair(search["latency"]["vector_given_embedding"]),
            _pair(lc_search["latency"]["vector_given_embedding"]),
            None,
        ],
        "BM25 p50 / p95 ms": [_pair(search["latency"]["bm25"]), _pair(lc_search["latency"]["bm25"]), None],
    }
    if r["lc_scale"] is not None:
        scale = r["lc_scale"]["search"]["latency"]
        table["100k passages: hybrid p50 / p95 ms, with query embedding"] = [None, _pair(scale["hybrid"]), None]
        table["100k passages: vector p50 / p95 ms, query vector given"] = [
            None,
            _pair(scale["vector_given_embedding"]),
            None,
        ]
    return {
        "corpus": {
            "scifact_files": len(r["files"]),
            "sample": SAMPLE or None,
            "claims": len(r["claims"]),
            "bench_documents": r["kb_bench40"]["documents"],
        },
        "columns": ["kb", "LangChain stack", "model alone"],
        "table": table,
        "kb": {
            "scifact": kb,
            "search": search,
            "bench40": r["kb_bench40"],
            "settings": {
                "worker_processes": r["processes"],
                "torch_threads_per_worker_process": r["threads"],
                "chunk_target_tokens": settings.KB_CHUNK_TARGET_TOKENS,
                "chunk_max_tokens": settings.KB_CHUNK_MAX_TOKENS,
                "chunk_overlap_tokens": settings.KB_CHUNK_OVERLAP_TOKENS,
                "embedding_batch_size": settings.KB_EMBEDDING_BATCH_SIZE,
                "fusion_top_n": settings.KB_FUSION_TOP_N,
                "fused_depth": FUSED_DEPTH,
            },
        },
        "langchain": {"scifact": r["lc_scifact"], "bench40": r["lc_bench40"], "scale_100k": r["lc_scale"]},
        "model_alone": {
            "passages": len(r["share"]),
            "of_kb_passages": len(r["inputs"]),
            "passages_per_s": round(r["model_rate"], 2),
            "processes": r["processes"],
            "threads_per_process": r["threads"],
        },
    }


def _pair(latency: dict) -> str:
    return f"{latency['p50_ms']:.0f} / {latency['p95_ms']:.0f}"


def _html(report: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *report["columns"]])
    rows = "".join(
        "<tr><th>"
        + html.escape(name)
        + "</th>"
        + "".join(f"<td>{'' if v is None else html.escape(str(v))}</td>" for v in values)
        + "</tr>"
        for name, values in report["table"].items()
    )
    machine = report["machine"]
    return (
        "<!doctype html><meta charset=utf-8><title>kb against the usual stack</title>"
        "<style>body{font:14px sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd;"
        "text-align:right}th:first-child{text-align:left}</style>"
        f"<h1>kb against the usual stack (LangChain)</h1><p>SciFact: {report['corpus']['scifact_files']} files, "
        f"{report['corpus']['claims']} test claims; {machine['cpus']} cores, load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after; "
        f"{machine['run_minutes']} min.</p><table><tr>{head}</tr>{rows}</table>\n"
    )


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "bench", "-s"]))
