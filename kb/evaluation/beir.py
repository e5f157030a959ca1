"""Retrieval evaluation on BEIR-format files, in an index that users never see.

The corpus goes into its own PostgreSQL database on the same server (`<db>_eval_<fingerprint>`), built with
the same migrations, chunker, embedding model and keyword analyzer as the product's index. The database
name is a fingerprint of everything that shapes the index (the corpus file's sha256, the embedding model,
the chunk sizes, the analyzer), so a second run with nothing changed reuses it without re-embedding, and a
change of any of them builds a new one. Documents are written in batches, each in its own transaction,
so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from ingest.chunker import CHUNKER_VERSION
from ingest.models import Chunk, Document, DocumentStatus
from ingest.parsers import PARAGRAPH, PLAIN, Block, document_from_blocks
from ingest.services import chunk_from_draft, chunks_of, indexed_text
from kb.search import embeddings, packing
from kb.search.analyzer import analyze
from kb.search.indexing import index_apply

# Bumped when the way a BEIR corpus is turned into chunks changes: old evaluation indexes are then rebuilt.
LOADER_VERSION = 1
# Documents embedded and written per transaction: big enough for full embedding batches, small enough that
# an interrupted build loses little work and progress updates come every few seconds.
INGEST_BATCH_DOCS = 128
CUTOFFS = (10, 100)
# PostgreSQL truncates identifiers beyond 63 bytes; the fingerprint part must survive.
MAX_IDENTIFIER = 63
FINGERPRINT_CHARS = 16


@dataclass(frozen=True)
class BeirDoc:
    id: str
    title: str
    text: str


def _jsonl_rows(path: Path, kind: str, fields: str, build):
    """`build(row)` for each non-blank line; a malformed line stops the load naming its place and form."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield build(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BeirFormatError(f"{path}:{number}: not a BEIR {kind} line ({fields}): {exc}") from None


def corpus_load(path: Path) -> Iterator[BeirDoc]:
    return _jsonl_rows(
        path,
        "corpus",
        '{"_id", "title", "text"}',
        lambda row: BeirDoc(id=str(row["_id"]), title=(row.get("title") or "").strip(), text=row.get("text") or ""),
    )


def queries_load(path: Path) -> dict[str, str]:
    return dict(_jsonl_rows(path, "query", '{"_id", "text"}', lambda row: (str(row["_id"]), row["text"])))


def qrels_load(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {document id: relevance}; pairs with relevance 0 are kept out (they are not relevant)."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.strip().split("\t")
            if not line.strip() or (number == 1 and parts[0] == "query-id"):
                continue
            try:
                query_id, doc_id, score = parts[0], parts[1], int(parts[2])
            except (IndexError, ValueError):
                raise BeirFormatError(
                    f"{path}:{number}: not a BEIR qrels line (query-id<TAB>corpus-id<TAB>score)"
                ) from None
            if score > 0:
                qrels.setdefault(query_id, {})[doc_id] = score
    return qrels


class BeirFormatError(ValueError):
    pass


# --- the isolated index -----------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def index_fingerprint(corpus_sha256: str) -> str:
    """Everything that changes the built index; any change means a new evaluation database."""
    parts = {
        "corpus": corpus_sha256,
        "model": embeddings.model_id(),
        # Vectors of either precision are interchangeable in the product, but an evaluation compares settings:
        # its index is made in the arithmetic it is measured in.
        "precision": embeddings.precision(),
        "chunks": [settings.KB_CHUNK_TARGET_TOKENS, settings.KB_CHUNK_MAX_TOKENS, settings.KB_CHUNK_OVERLAP_TOKENS],
        "analyzer": settings.KB_TEXT_SEARCH_CONFIG,
        "loader": LOADER_VERSION,
        "chunker": CHUNKER_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:FINGERPRINT_CHARS]


def eval_database_name(fingerprint: str) -> str:
    """Named after the default database, so that a test run's evaluation databases are its own."""
    base = str(connection.settings_dict["NAME"])
    suffix = f"_eval_{fingerprint}"
    return base[: MAX_IDENTIFIER - len(suffix)] + suffix


@contextlib.contextmanager
def _server_cursor() -> Iterator:
    """A cursor on a connection of its own, in autocommit: CREATE/DROP DATABASE refuse to run in a
    transaction, and the caller's connection may be inside one."""
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with wrapper.cursor() as cursor:
            yield cursor
    finally:
        wrapper.close()


def database_ensure(name: str) -> bool:
    """Create the database `name` on the server of the default database; True when it was created."""
    with _server_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone():
            return False
        cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(name)}")
    return True


def database_drop(name: str) -> None:
    with _server_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {connection.ops.quote_name(name)} WITH (FORCE)")


@contextlib.contextmanager
def default_database(name: str) -> Iterator[None]:
    """Make database `name` (same server and credentials) this thread's default connection meanwhile.

    The analyzer and the index writer use the default connection; standing a connection to the isolated
    database in its place, rather than adding an alias, lets the index be built and searched by exactly
    the product's code. The previous connection is left untouched (even mid-transaction) and restored.
    """
    previous = connections[DEFAULT_DB_ALIAS]
    isolated = connections.create_connection(DEFAULT_DB_ALIAS)
    # Django keeps one connection pool per alias: the isolated connection must not draw from (or create)
    # the default database's pool, or it would silently work on the default database.
    options = {key: value for key, value in previous.settings_dict["OPTIONS"].items() if key != "pool"}
    isolated.settings_dict = {**previous.settings_dict, "NAME": name, "OPTIONS": options}
    connections[DEFAULT_DB_ALIAS] = isolated
    try:
        yield
    finally:
        isolated.close()
        connections[DEFAULT_DB_ALIAS] = previous


@contextlib.contextmanager
def isolated_index(name: str, *, log: Callable[[str], None] = lambda _: None) -> Iterator[None]:
    """Create (when missing) and migrate the database `name`, and make it the default meanwhile."""
    if database_ensure(name):
        log(f"created evaluation database {name}")
    with default_database(name):
        call_command("migrate", verbosity=0, interactive=False)
        yield


def corpus_ingest(
    docs: Iterable[BeirDoc],
    *,
    total: int | None = None,
    progress: Callable[[int, int | None, int], None] = lambda done, total, chunks: None,
) -> tuple[int, int]:
    """Add the corpus documents not yet in the (current default) database; returns (added, already there)."""
    present = set(Document.objects.values_list("filename", flat=True))
    batch: list[BeirDoc] = []
    added = 0
    chunks = 0
    for doc in docs:
        if doc.id in present:
            continue
        present.add(doc.id)  # a duplicate id in the file is indexed once
        batch.append(doc)
        if len(batch) >= INGEST_BATCH_DOCS:
            chunks += _ingest_batch(batch)
            added += len(batch)
            batch = []
            progress(added, total, chunks)
    if batch:
        chunks += _ingest_batch(batch)
        added += len(batch)
        progress(added, total, chunks)
    # Searches read a term's postings as one row from here (if another pack is running, it moves them).
    packing.postings_pack()
    return added, len(present) - added


def _ingest_batch(docs: Sequence[BeirDoc]) -> int:
    drafts_by_doc = []
    inputs: list[str] = []
    for doc in docs:
        parsed = document_from_blocks(PLAIN, [Block(kind=PARAGRAPH, text=doc.text, heading_path=(), page=None)])
        drafts = chunks_of(parsed)
        drafts_by_doc.append(drafts)
        # Title and text, as BEIR systems index them; a text-less document is still found by its title.
        inputs.extend(indexed_text(doc.title, d.text, d.heading_path) for d in drafts)
        if not drafts:
            inputs.append(doc.title)
    vectors = embeddings.embed(inputs)  # every document gives at least one input (its title)
    terms = analyze(inputs)
    now = timezone.now()
    with transaction.atomic():
        documents = Document.objects.bulk_create(
            [
                Document(
                    title=(doc.title or doc.id)[:300],
                    filename=doc.id,
                    sha256=hashlib.sha256(f"{doc.title}\n{doc.text}".encode()).hexdigest(),
                    size=len(doc.text),
                    media_type=PLAIN,
                    status=DocumentStatus.READY,
                    searchable=True,
                    embedding_model=embeddings.model_id(),
                    ready_at=now,
                    chunks_total=len(drafts) or 1,
                    chunks_embedded=len(drafts) or 1,
                )
                for doc, drafts in zip(docs, drafts_by_doc, strict=True)
            ]
        )
        rows = []
        position = 0
        for document, doc, drafts in zip(documents, docs, drafts_by_doc, strict=True):
            if not drafts:
                rows.append(
                    Chunk(
                        document=document,
                        ordinal=0,
                        text=doc.title,
                        heading_path=[document.title],
                        char_start=0,
                        char_end=0,
                        token_count=0,
                        embedding=vectors[position],
                    )
                )
                position += 1
                continue
            for draft in drafts:
                rows.append(chunk_from_draft(document, draft, vectors[position]))
                position += 1
        created = Chunk.objects.bulk_create(rows)
        index_apply(add=[(chunk.id, counts) for chunk, counts in zip(created, terms, strict=True)])
    return len(created)


# --- metrics ----------------------------------------------------------------------------------------------


def ndcg_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    """nDCG with graded gains and a log2 discount, as trec_eval and BEIR compute it."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    return len(set(ranking[:k]) & relevant.keys()) / len(relevant) if relevant else 0.0


def mrr_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    for rank, doc in enumerate(ranking[:k], 1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the value below which `fraction` of the samples fall."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class ModeReport:
    mode: str
    queries: int = 0
    ndcg_10: float = 0.0
    recall_10: float = 0.0
    recall_100: float = 0.0
    mrr_10: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    search_ms_p50: float = 0.0
    search_ms_p95: float = 0.0
    per_query_ndcg_10: dict[str, float] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "queries": self.queries,
            "ndcg@10": round(self.ndcg_10, 4),
            "recall@10": round(self.recall_10, 4),
            "recall@100": round(self.recall_100, 4),
            "mrr@10": round(self.mrr_10, 4),
            "latency_ms": {"p50": round(self.latency_ms_p50, 2), "p95": round(self.latency_ms_p95, 2)},
            "search_ms_excluding_embedding": {"p50": round(self.search_ms_p50, 2), "p95": round(self.search_ms_p95, 2)},
        }


def evaluate(
    rank: Callable[[str], tuple[list[str], float, float]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    mode: str,
) -> ModeReport:
    """Score `rank(query) -> (document ids best first, total ms, ms excluding the query embedding)` on
    every query that has relevance judgements."""
    report = ModeReport(mode=mode)
    totals: list[float] = []
    searches: list[float] = []
    sums = dict.fromkeys(("ndcg", "r10", "r100", "mrr"), 0.0)
    for query_id, relevant in qrels.items():
        if query_id not in queries:
            continue
        ranking, total_ms, search_ms = rank(queries[query_id])
        totals.append(total_ms)
        searches.append(search_ms)
        ndcg = ndcg_at(ranking, relevant, 10)
        report.per_query_ndcg_10[query_id] = ndcg
        sums["ndcg"] += ndcg
        sums["r10"] += recall_at(ranking, relevant, 10)
        sums["r100"] += recall_at(ranking, relevant, 100)
        sums["mrr"] += mrr_at(ranking, relevant, 10)
    count = len(totals)
    report.queries = count
    if count:
        report.ndcg_10 = sums["ndcg"] / count
        report.recall_10 = sums["r10"] / count
        report.recall_100 = sums["r100"] / count
        report.mrr_10 = sums["mrr"] / count
        report.latency_ms_p50 = statistics.median(totals)
        report.latency_ms_p95 = percentile(totals, 0.95)
        report.search_ms_p50 = statistics.median(searches)
        report.search_ms_p95 = percentile(searches, 0.95)
    return report


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
