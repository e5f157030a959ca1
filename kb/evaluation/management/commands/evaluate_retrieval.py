"""manage.py evaluate_retrieval --corpus F --queries F --qrels F [--mode hybrid|bm25|vector|all] [--json]"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from ingest.models import Chunk, Document
from kb.evaluation import beir
from kb.search import embeddings
from kb.search.retrieval import MODES, ReadScope, search_in_scope

# Chunks asked for per query. A document is scored by its best chunk, and SciFact abstracts make about two
# chunks each: 300 chunks still give the 100 distinct documents that Recall@100 needs.
EVAL_CHUNK_DEPTH = 300
EVAL_DOC_DEPTH = 100
QUERY_PROGRESS_EVERY = 100  # lines of query progress in a non-terminal log


class Command(BaseCommand):
    help = (
        "Measure retrieval quality and latency on BEIR files (nDCG@10, Recall@10/100, MRR@10, p50/p95), "
        "in an isolated index built once per corpus, model and chunk settings."
    )

    def add_arguments(self, parser):
        parser.add_argument("--corpus", required=True, type=Path, help="BEIR corpus.jsonl")
        parser.add_argument("--queries", required=True, type=Path, help="BEIR queries.jsonl")
        parser.add_argument(
            "--qrels", type=Path, help="BEIR qrels .tsv, or a folder holding <split>.tsv (default: qrels/ by corpus)"
        )
        parser.add_argument("--split", default="test", help="qrels split when --qrels is a folder (default test)")
        parser.add_argument("--mode", choices=[*MODES, "all"], default="all", help="search to evaluate (default all)")
        parser.add_argument("--limit", type=int, help="evaluate only the first N judged queries")
        parser.add_argument("--rebuild", action="store_true", help="drop the isolated index and build it again")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the results as JSON on stdout")

    def handle(self, *args, corpus, queries, qrels, split, mode, limit, rebuild, as_json: bool, **options):
        qrels_path = _qrels_path(corpus, qrels, split)
        for path in (corpus, queries, qrels_path):
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        try:
            query_texts = beir.queries_load(queries)
            judgements = beir.qrels_load(qrels_path)
            total_docs = sum(1 for _ in beir.corpus_load(corpus))
        except beir.BeirFormatError as exc:
            raise CommandError(str(exc)) from None
        judgements = {qid: rel for qid, rel in judgements.items() if qid in query_texts}
        if limit is not None:
            judgements = dict(list(judgements.items())[: max(limit, 0)])
        if not judgements:
            raise CommandError(f"no query in {queries} has a judgement in {qrels_path}")

        corpus_sha256 = beir.file_sha256(corpus)
        name = beir.eval_database_name(beir.index_fingerprint(corpus_sha256))
        try:
            if rebuild:
                beir.database_drop(name)
            with beir.isolated_index(name, log=self._log):
                build_started = time.perf_counter()
                added, present = beir.corpus_ingest(beir.corpus_load(corpus), total=total_docs, progress=self._progress)
                if added:
                    self._log(f"indexed {added} documents in {time.perf_counter() - build_started:.0f} s")
                else:
                    self._log(f"reusing the evaluation index {name} ({present} documents, nothing changed)")
                index = {
                    "database": name,
                    "documents": Document.objects.count(),
                    "chunks": Chunk.objects.count(),
                    "added_now": added,
                    "embedding_model": embeddings.model_id(),
                }
                modes = list(MODES) if mode == "all" else [mode]
                reports = [self._evaluate(m, query_texts, judgements) for m in modes]
        except DatabaseError as exc:
            raise CommandError(
                f"the evaluation database {name} could not be prepared: {exc}".strip()
                + " (the database user needs the CREATEDB privilege)"
            ) from None

        result = {
            "corpus": str(corpus),
            "corpus_sha256": corpus_sha256,
            "qrels": str(qrels_path),
            "queries": len(judgements),
            "index": index,
            "settings": {
                "bm25_k1": settings.KB_BM25_K1,
                "bm25_b": settings.KB_BM25_B,
                "rrf_k": settings.KB_RRF_K,
                "rrf_weights": {"vector": settings.KB_RRF_VECTOR_WEIGHT, "bm25": settings.KB_RRF_BM25_WEIGHT},
                "fusion_top_n": settings.KB_FUSION_TOP_N,
                "hnsw_ef_search": settings.KB_HNSW_EF_SEARCH,
                "text_search_config": settings.KB_TEXT_SEARCH_CONFIG,
                "chunk_depth": EVAL_CHUNK_DEPTH,
            },
            "modes": {report.mode: report.as_dict() for report in reports},
        }
        if as_json:
            self.stdout.write(json.dumps(result, indent=2))
        else:
            self.stdout.write(_table(result))

    def _evaluate(self, mode, query_texts: dict[str, str], judgements: dict[str, dict[str, int]]) -> beir.ModeReport:
        scope = ReadScope.all_documents()
        filename_of = dict(Document.objects.values_list("id", "filename"))
        search_in_scope("warm up", scope, EVAL_CHUNK_DEPTH, mode=mode)  # model load and caches stay out of timings
        done = 0

        def rank(query: str) -> tuple[list[str], float, float]:
            nonlocal done
            result = search_in_scope(query, scope, EVAL_CHUNK_DEPTH, mode=mode)
            ranking: list[str] = []
            seen: set[int] = set()
            for hit in result.hits:  # a document ranks where its best chunk does
                if hit.document_id not in seen:
                    seen.add(hit.document_id)
                    ranking.append(filename_of[hit.document_id])
            done += 1
            self._bar(f"{mode}: queries", done, len(judgements), every=QUERY_PROGRESS_EVERY)
            return ranking[:EVAL_DOC_DEPTH], result.timings.total_ms, result.timings.search_ms

        report = beir.evaluate(rank, query_texts, judgements, mode=mode)
        self._end_bar()
        return report

    # --- progress on stderr, so that --json output stays clean ----------------------------------------------

    def _log(self, message: str) -> None:
        self.stderr.write(message)

    def _progress(self, done: int, total: int | None, chunks: int) -> None:
        self._bar(f"embedded and indexed documents ({chunks} chunks)", done, total or done, every=1)
        if total and done >= total:
            self._end_bar()

    def _bar(self, label: str, done: int, total: int, *, every: int) -> None:
        """One rewritten line on a terminal; a line per `every` steps in a log."""
        if sys.stderr.isatty():
            self.stderr.write(f"\r{label}: {done}/{total}", ending="")
            self.stderr.flush()
        elif done == total or done % every == 0:
            self.stderr.write(f"{label}: {done}/{total}")

    def _end_bar(self) -> None:
        if sys.stderr.isatty():
            self.stderr.write("")


def _qrels_path(corpus: Path, qrels: Path | None, split: str) -> Path:
    if qrels is None:
        return corpus.parent / "qrels" / f"{split}.tsv"
    if qrels.is_dir():
        return qrels / f"{split}.tsv"
    return qrels


def _table(result: dict) -> str:
    index = result["index"]
    lines = [
        f"{result['queries']} queries on {index['documents']} documents ({index['chunks']} chunks), "
        f"index {index['database']}",
        "",
        f"{'mode':<8} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p95 excl. embedding':>20}",
    ]
    for mode, row in result["modes"].items():
        lines.append(
            f"{mode:<8} {row['ndcg@10']:>8.4f} {row['recall@10']:>7.4f} {row['recall@100']:>7.4f} "
            f"{row['mrr@10']:>7.4f} {row['latency_ms']['p50']:>8.1f} {row['latency_ms']['p95']:>8.1f} "
            f"{row['search_ms_excluding_embedding']['p95']:>20.1f}"
        )
    return "\n".join(lines)
