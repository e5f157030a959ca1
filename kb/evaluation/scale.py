"""A synthetic-but-realistic corpus of 100k to 1M passages for the scale bench, built once and cached.

`python -m kb.evaluation.scale --passages N` builds it (resumable at every stage; re-running finishes what
an interrupted run left), `--measure` measures it (tests/bench/test_scale_bench.py does both).

Text. Passages of ~150-200 words are real English sentences of BEIR SciFact's 5,183 abstracts: a run of
consecutive sentences from one abstract (the document's own or one of its nearest abstracts) plus single
sentences from the document's abstract and its neighbours, recombined in a seeded random order. A document
is 20 passages about one abstract's topic, with that abstract's title (and a variant label past the first
5,183 documents) and section headings. Documents have one of six access groups or none (28 %): the
benchmark's employee holds four of them and reads ~76 % of the documents; the admin reads all.

Vectors. Every SciFact sentence and title is embedded once with kb's model (`embeddings.embed`); a passage's
vector is the normalised mean of its title's and sentences' vectors plus a little Gaussian noise (the
report gives its cosine to the model's own embedding of the same passages). Queries are the 300 SciFact
test claims and a few colloquial questions, embedded by the model.

Passage number p (0-based) is a pure function of (SEED, p): a corpus of N passages is the first N passages
of every larger one. Document d holds passages 20d..20d+19; database ids are d + 1 and p + 1.

On disk (under KB_DATA_DIR/scale, i.e. var/scale/):
    sentences.json             SciFact abstracts split into sentences (+ titles), words per sentence
    sentence-vectors/NNNNN.npy the model's vectors of those texts, in blocks (resumable)
    neighbours.npy             each abstract's nearest abstracts (by mean sentence vector)
    queries.json, queries.npy  the queries, their SciFact qrels, and the model's vectors
    parts/part-NNNNN.jsonl     generated passages, 10,000 per part (document, title, heading path, text)
    parts/part-NNNNN.npy       their vectors (float32, 10,000 x 384)
    build-N.json               what the database build of N passages took, step by step

Database: `kb_scale_<N>` (e.g. kb_scale_100000, kb_scale_1000000) on the server of the default database
(the embedded server under var/pg when DATABASE_URL is unset), created with kb's migrations. Progress is
kept in it: table scale_part (parts whose rows and postings are committed, one transaction per part) and
scale_step (indexes built, with seconds). While parts are loading, the postings' primary key and chunk
index and the HNSW index are dropped; the last step rebuilds them.

From another checkout: `KB_DATA_DIR=/work/wt-scale/var` joins the same embedded server and var/scale cache
(or DATABASE_URL=postgresql://postgres@/kb?host=/work/wt-scale/var/pg); `measure(N)` then times whichever
bm25_leg and vector_leg that checkout's kb.search.retrieval has (exact BM25 here is its own SQL).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261202
PASSAGES_PER_DOCUMENT = 20
PART_SIZE = 10_000  # passages per generated file and per load transaction (500 documents)
WORDS = (150, 200)  # target words per passage, drawn uniformly
FOCUS_SHARE = 0.6  # of a passage's words, from one run of consecutive sentences
NEIGHBOURS = 8  # nearest abstracts a document's passages draw from
NOISE = 0.05  # norm of the Gaussian noise added to a (unit) mean vector before normalising again
MIN_SENTENCE_WORDS = 4
GROUPS = 6  # access groups scale-1 .. scale-6
UNGROUPED_SHARE = 0.28
READER_GROUPS = 4  # the employee holds scale-1 .. scale-4: reads 0.28 + 0.72 * 4/6 = 76 % of the documents
SECTIONS = ("Background", "Methods", "Results", "Discussion", "Limitations")
VARIANTS = ("review", "notes", "briefing", "summary", "protocol", "digest")
EMBED_BLOCK = 4096
# Abstracts the sentences come from: the model embeds ~15-20 sentences/s on this (shared, 2-core) machine, so
# all 5,183 abstracts (49,923 texts) would take ~50 min; the first 1,500 (~14,500 texts) take ~12 min and
# still give ~1,500 topics x 8 neighbours.
SOURCE_ABSTRACTS = 1500
COLLOQUIAL_QUERIES = (
    "does coffee give you cancer",
    "why do people put on weight as they get older",
    "can a vaccine make you sick",
    "is it bad to take antibiotics for a cold",
    "what happens to the brain when you don't sleep",
    "do statins stop heart attacks",
    "is sugar why kids get cavities",
    "can stress make your hair go grey",
)

# The shared evaluation data beside the checkout, as tests/evaluation/test_evaluate_retrieval.py finds it.
SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"


class ScaleDataMissing(RuntimeError):
    """The SciFact files the corpus is made from are not on this machine."""


def data_dir() -> Path:
    from django.conf import settings

    return Path(settings.KB_DATA_DIR) / "scale"


def database_name(passages: int) -> str:
    return f"kb_scale_{passages}"


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file and rename: a file that exists is complete (resumability)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two builds (100k, 1M) may write one part
    write(tmp)
    os.replace(tmp, path)


def _npy_save(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.save(handle, array)

    _atomic_write(path, write)


def _json_save(path: Path, value) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value)))


# --- stage 1: sentences and their vectors ----------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def split_sentences(text: str) -> list[str]:
    parts = [part.strip() for part in _SENTENCE_END.split(text.replace("\n", " "))]
    return [part for part in parts if len(part.split()) >= MIN_SENTENCE_WORDS]


@dataclass(frozen=True)
class Source:
    """SciFact as sentences: texts[i] is a title (titles[a] is abstract a's) or a sentence."""

    texts: list[str]
    words: np.ndarray  # words per text
    titles: list[int]  # per abstract: index of its title in texts
    sentences: list[list[int]]  # per abstract: indexes of its sentences in texts
    vectors: np.ndarray  # per text: the model's vector (float32, unit)
    neighbours: np.ndarray  # per abstract: its NEIGHBOURS nearest abstracts


def sentences_ensure(root: Path, corpus: Path | None = None, limit: int | None = None) -> dict:
    """SciFact's abstracts (the first `limit` of them) as titles and sentences, split once."""
    path = root / "sentences.json"
    if path.exists():
        return json.loads(path.read_text())
    corpus = corpus or SCIFACT / "corpus.jsonl"
    if not corpus.exists():
        raise ScaleDataMissing(f"{corpus} is missing: the scale corpus is made from SciFact's abstracts")
    texts: list[str] = []
    titles: list[int] = []
    sentences: list[list[int]] = []
    with corpus.open(encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(titles) >= limit:
                break
            row = json.loads(line)
            own = split_sentences(row.get("text") or "")
            if not own:
                continue
            titles.append(len(texts))
            texts.append((row.get("title") or "").strip() or own[0])
            sentences.append(list(range(len(texts), len(texts) + len(own))))
            texts.extend(own)
    value = {"texts": texts, "words": [len(t.split()) for t in texts], "titles": titles, "sentences": sentences}
    _json_save(path, value)
    return value


def vectors_ensure(root: Path, texts: Sequence[str], log: Callable[[str], None]) -> np.ndarray:
    """The model's vectors of `texts`, embedded once in blocks (an interrupted run keeps its blocks)."""
    from kb.search import embeddings

    folder = root / "sentence-vectors"
    blocks = []
    for start in range(0, len(texts), EMBED_BLOCK):
        path = folder / f"{start // EMBED_BLOCK:05d}.npy"
        if not path.exists():
            began = time.perf_counter()
            block = embeddings.embed(list(texts[start : start + EMBED_BLOCK]), batch_size=32).astype(np.float32)
            _npy_save(path, block)
            log(
                f"embedded texts {start:,}-{start + len(block):,} of {len(texts):,} "
                f"({time.perf_counter() - began:.0f} s)"
            )
        blocks.append(np.load(path))
    return np.concatenate(blocks)


def neighbours_ensure(root: Path, vectors: np.ndarray, sentences: list[list[int]]) -> np.ndarray:
    path = root / "neighbours.npy"
    if path.exists():
        return np.load(path)
    means = np.stack([vectors[ids].mean(axis=0) for ids in sentences])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    similarity = means @ means.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :NEIGHBOURS].astype(np.int32)
    _npy_save(path, nearest)
    return nearest


def source_ensure(
    root: Path, log: Callable[[str], None] = print, corpus: Path | None = None, limit: int | None = None
) -> Source:
    raw = sentences_ensure(root, corpus, SOURCE_ABSTRACTS if limit is None else limit)
    vectors = vectors_ensure(root, raw["texts"], log)
    return Source(
        texts=raw["texts"],
        words=np.array(raw["words"]),
        titles=raw["titles"],
        sentences=raw["sentences"],
        vectors=vectors,
        neighbours=neighbours_ensure(root, vectors, raw["sentences"]),
    )


# --- stage 2: passages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    number: int
    document: int
    ordinal: int
    title: str
    heading_path: list[str]
    text: str
    groups: list[int]  # access group numbers 1..GROUPS of its document; [] for none
    parts: list[int]  # indexes into Source.texts whose vectors make its vector (title first)


def document_groups(document: int) -> list[int]:
    rng = random.Random(f"{SEED}/groups/{document}")
    return [] if rng.random() < UNGROUPED_SHARE else [rng.randint(1, GROUPS)]


def document_title(source: Source, document: int, abstract: int) -> str:
    title = source.texts[source.titles[abstract]]
    variant = document // len(source.sentences)
    return title if variant == 0 else f"{title} ({VARIANTS[variant % len(VARIANTS)]} {variant})"


def heading_path(ordinal: int) -> list[str]:
    section = SECTIONS[ordinal * len(SECTIONS) // PASSAGES_PER_DOCUMENT]
    per_section = PASSAGES_PER_DOCUMENT // len(SECTIONS)
    return [section] if ordinal % per_section == 0 else [section, f"{section} {ordinal % per_section + 1}"]


def passage_make(source: Source, number: int, order: Sequence[int]) -> Passage:
    document, ordinal = divmod(number, PASSAGES_PER_DOCUMENT)
    abstract = order[document % len(order)]
    rng = random.Random(f"{SEED}/passage/{number}")
    target = rng.randint(*WORDS)
    pool = [abstract, *source.neighbours[abstract].tolist()]
    focus = abstract if rng.random() < 0.5 else rng.choice(pool[1:])
    own = source.sentences[focus]
    start = rng.randrange(len(own))
    run: list[int] = []
    words = 0
    for index in own[start:] + own[:start]:
        if words >= FOCUS_SHARE * target:
            break
        run.append(index)
        words += int(source.words[index])
    extras: list[int] = []
    used = set(run)
    for _ in range(200):  # enough draws to fill any target; stops far earlier
        if words >= target:
            break
        candidate = rng.choice(source.sentences[rng.choice(pool)])
        if candidate in used:
            continue
        used.add(candidate)
        extras.append(candidate)
        words += int(source.words[candidate])
    position = rng.randint(0, len(extras))
    chosen = extras[:position] + run + extras[position:]
    return Passage(
        number=number,
        document=document,
        ordinal=ordinal,
        title=document_title(source, document, abstract),
        heading_path=heading_path(ordinal),
        text=" ".join(source.texts[i] for i in chosen),
        groups=document_groups(document),
        parts=[source.titles[abstract], *chosen],
    )


def passage_vectors(source: Source, passages: Sequence[Passage]) -> np.ndarray:
    """Normalised mean of each passage's title and sentence vectors, plus seeded noise of norm ~NOISE."""
    lengths = np.array([len(p.parts) for p in passages])
    gathered = source.vectors[np.concatenate([p.parts for p in passages])]
    sums = np.add.reduceat(gathered, np.concatenate([[0], np.cumsum(lengths)[:-1]]), axis=0)
    means = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    rng = np.random.default_rng([SEED, passages[0].number])
    noise = rng.standard_normal(means.shape).astype(np.float32) * (NOISE / math.sqrt(means.shape[1]))
    result = means + noise
    return (result / np.linalg.norm(result, axis=1, keepdims=True)).astype(np.float32)


def _abstract_order(source: Source) -> list[int]:
    return random.Random(f"{SEED}/order").sample(range(len(source.sentences)), len(source.sentences))


def part_paths(root: Path, part: int) -> tuple[Path, Path]:
    return root / "parts" / f"part-{part:05d}.jsonl", root / "parts" / f"part-{part:05d}.npy"


def parts_ensure(root: Path, source: Source, passages: int, log: Callable[[str], None]) -> int:
    """Generate the parts of the first `passages` passages that are not on disk yet; returns how many parts."""
    if passages % PART_SIZE:
        raise ValueError(f"--passages must be a multiple of {PART_SIZE:,}")
    order = _abstract_order(source)
    parts = passages // PART_SIZE
    for part in range(parts):
        text_path, vector_path = part_paths(root, part)
        if text_path.exists() and vector_path.exists():
            continue
        made = [passage_make(source, n, order) for n in range(part * PART_SIZE, (part + 1) * PART_SIZE)]
        _npy_save(vector_path, passage_vectors(source, made))
        lines = [
            json.dumps(
                {
                    "n": p.number,
                    "document": p.document,
                    "ordinal": p.ordinal,
                    "title": p.title,
                    "heading_path": p.heading_path,
                    "text": p.text,
                    "groups": p.groups,
                }
            )
            for p in made
        ]
        body = "\n".join(lines) + "\n"
        _atomic_write(text_path, partial(Path.write_text, data=body, encoding="utf-8"))
        if part % 10 == 9 or part == parts - 1:
            log(f"generated part {part + 1} of {parts}")
    return parts


def part_read(root: Path, part: int) -> tuple[list[dict], np.ndarray]:
    text_path, vector_path = part_paths(root, part)
    with text_path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows, np.load(vector_path)


# --- queries ----------------------------------------------------------------------------------------------


def queries_ensure(root: Path) -> tuple[list[dict], np.ndarray]:
    """The SciFact test claims (with their relevant abstracts) and the colloquial questions, and their vectors."""
    from kb.evaluation import beir
    from kb.search import embeddings

    path, vector_path = root / "queries.json", root / "queries.npy"
    if path.exists() and vector_path.exists():
        return json.loads(path.read_text()), np.load(vector_path)
    texts = beir.queries_load(SCIFACT / "queries.jsonl")
    qrels = beir.qrels_load(SCIFACT / "qrels" / "test.tsv")
    queries = [{"id": qid, "text": texts[qid], "kind": "scifact"} for qid in sorted(qrels, key=int) if qid in texts]
    queries += [
        {"id": f"colloquial-{n}", "text": text, "kind": "colloquial"} for n, text in enumerate(COLLOQUIAL_QUERIES)
    ]
    vectors = embeddings.embed([q["text"] for q in queries]).astype(np.float32)
    _npy_save(vector_path, vectors)
    _json_save(path, queries)
    return queries, vectors


# --- stage 3: the database --------------------------------------------------------------------------------

CHUNK_COLUMNS = (
    "id",
    "document_id",
    "ordinal",
    "text",
    "heading_path",
    "char_start",
    "char_end",
    "token_count",
    "untrusted",
    "embedding",
)
CHUNK_TYPES = ("int8", "int8", "int4", "text", "jsonb", "int4", "int4", "int4", "bool", "vector")
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 128  # the product's index: kb.search.retrieval's (a test holds them equal)
# The HNSW build is fastest when the graph fits in it (1M halfvec passages at m = 32: ~1.3 GB).
MAINTENANCE_WORK_MEM = "3GB"


def _groups_ensure() -> dict[int, int]:
    from kb.accounts.models import AccessGroup

    return {n: AccessGroup.objects.get_or_create(name=f"scale-{n}")[0].pk for n in range(1, GROUPS + 1)}


def reader_group_ids() -> tuple[int, ...]:
    from kb.accounts.models import AccessGroup

    names = [f"scale-{n}" for n in range(1, READER_GROUPS + 1)]
    return tuple(sorted(AccessGroup.objects.filter(name__in=names).values_list("pk", flat=True)))


def _progress_tables(cursor) -> None:
    cursor.execute("CREATE TABLE IF NOT EXISTS scale_part (part int PRIMARY KEY, seconds float8 NOT NULL)")
    cursor.execute("CREATE TABLE IF NOT EXISTS scale_step (step text PRIMARY KEY, seconds float8 NOT NULL)")


def _loaded_parts(cursor) -> set[int]:
    cursor.execute("SELECT part FROM scale_part")
    return {row[0] for row in cursor.fetchall()}


def _indexes_drop(cursor) -> None:
    """Bulk loads are far faster without the indexes; the last step builds them once."""
    cursor.execute("DELETE FROM scale_step WHERE step LIKE 'index:%'")
    cursor.execute("DROP INDEX IF EXISTS chunk_embedding_hnsw")
    cursor.execute("ALTER TABLE search_posting DROP CONSTRAINT IF EXISTS search_posting_pkey")
    cursor.execute("DROP INDEX IF EXISTS search_posting_chunk")


# kb's analyzer (kb.search.analyzer._SQL) and index writer (kb.search.indexing.index_apply) in set-based SQL:
# the same lexemes and term frequencies, the same df deltas applied in text order, the same statistics upsert,
# without carrying ~1M postings per part through Python (that took 90 s of a part's 100 s here).
_TF_SQL = """
INSERT INTO scale_tf (chunk_id, lexeme, tf)
SELECT (%(ids)s::bigint[])[t.ord], l.lexeme, coalesce(array_length(l.positions, 1), 1)
FROM unnest(%(texts)s::text[]) WITH ORDINALITY AS t(body, ord),
     LATERAL unnest(to_tsvector(%(config)s::regconfig, t.body)) AS l
WHERE length(l.lexeme) <= %(max_length)s
"""
_TERMS_SQL = """
INSERT INTO search_term (text, df)
SELECT lexeme, count(*) FROM scale_tf GROUP BY lexeme ORDER BY lexeme
ON CONFLICT (text) DO UPDATE SET df = search_term.df + EXCLUDED.df
"""
_POSTINGS_SQL = """
INSERT INTO search_posting (term_id, chunk_id, tf, len)
SELECT t.id, f.chunk_id, f.tf, sum(f.tf) OVER (PARTITION BY f.chunk_id)
FROM scale_tf f JOIN search_term t ON t.text = f.lexeme
ORDER BY t.id, f.chunk_id
"""
_STATE_SQL = """
INSERT INTO search_indexstate (id, chunk_count, total_length, version)
SELECT 1, %(chunks)s, coalesce(sum(tf), 0), 1 FROM scale_tf
ON CONFLICT (id) DO UPDATE SET chunk_count = search_indexstate.chunk_count + EXCLUDED.chunk_count,
    total_length = search_indexstate.total_length + EXCLUDED.total_length,
    version = search_indexstate.version + 1
"""


def postings_write(chunk_ids: list[int], texts: list[str]) -> None:
    """Postings, term document frequencies and corpus statistics for new chunks, as index_apply writes them
    (but into the rows alone: the database is marked pending, so searches score the rows until a full pack)."""
    from django.conf import settings
    from django.db import connection

    from kb.search import packing
    from kb.search.analyzer import MAX_TERM_LENGTH

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS scale_tf (chunk_id bigint, lexeme text, tf int) ON COMMIT DELETE ROWS"
        )
        params: dict[str, Any] = {"ids": chunk_ids, "texts": texts, "config": settings.KB_TEXT_SEARCH_CONFIG}
        cursor.execute(_TF_SQL, {**params, "max_length": MAX_TERM_LENGTH})
        cursor.execute(_TERMS_SQL)
        cursor.execute(_POSTINGS_SQL)
        cursor.execute(_STATE_SQL, {"chunks": len(chunk_ids)})
        cursor.execute("TRUNCATE scale_tf")
    packing.pending_mark()  # until the blocks step packs them, searches score the rows


def part_load(part: int, groups: dict[int, int], root: Path) -> None:
    """One part's documents, chunks (COPY) and postings (as kb's analyzer and index writer), in one transaction."""
    from django.db import connection, transaction
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    from ingest.models import Document, DocumentStatus
    from ingest.services import indexed_text
    from kb.search import embeddings

    rows, vectors = part_read(root, part)
    began = time.perf_counter()
    model = embeddings.model_id()
    documents: dict[int, list[dict]] = {}
    for row in rows:
        documents.setdefault(row["document"], []).append(row)
    with transaction.atomic():
        Document.objects.bulk_create(
            [
                Document(
                    id=d + 1,
                    title=own[0]["title"][:300],
                    filename=f"scale-{d:07d}.md",
                    sha256=f"{d:064x}",
                    size=sum(len(r["text"]) for r in own),
                    media_type="text/markdown",
                    status=DocumentStatus.READY,
                    searchable=True,
                    chunks_total=len(own),
                    chunks_embedded=len(own),
                    extracted_chars=sum(len(r["text"]) for r in own),
                    embedding_model=model,
                )
                for d, own in documents.items()
            ],
            batch_size=1000,
        )
        through = Document.access_groups.through
        through.objects.bulk_create(
            [
                through(document_id=d + 1, accessgroup_id=groups[g])
                for d, own in documents.items()
                for g in own[0]["groups"]
            ]
        )
        copy_sql = f"COPY ingest_chunk ({', '.join(CHUNK_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
        # Binary COPY: no float formatting in Python nor parsing in PostgreSQL, for 3.8M floats a part.
        with connection.connection.cursor() as raw:
            # This cursor only: numpy arrays go in pgvector's binary format.
            register_vector_info(raw, TypeInfo.fetch(connection.connection, "vector"))
            with raw.copy(copy_sql) as copy:
                copy.set_types(CHUNK_TYPES)
                for row, vector in zip(rows, vectors, strict=True):
                    text = row["text"]
                    ids = (row["n"] + 1, row["document"] + 1, row["ordinal"])
                    copy.write_row((*ids, text, row["heading_path"], 0, len(text), len(text.split()), False, vector))
        postings_write(
            [row["n"] + 1 for row in rows], [indexed_text(r["title"], r["text"], r["heading_path"]) for r in rows]
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO scale_part (part, seconds) VALUES (%s, %s)", [part, time.perf_counter() - began]
            )


def indexes_build(log: Callable[[str], None]) -> dict[str, float]:
    """The postings' primary key and chunk index, the HNSW index and the postings' blocks (the first full pack),
    each timed; then VACUUM ANALYZE."""
    from django.db import connection

    from kb.search import packing
    from kb.search.retrieval import hnsw_index_sql

    def postings_blocks() -> None:
        if packing.postings_pack(full=True).skipped:
            raise RuntimeError("another postings pack is running on this database (beat?): stop it first")

    steps: dict[str, str | Callable[[], None]] = {
        "index:posting_pkey": "ALTER TABLE search_posting ADD CONSTRAINT search_posting_pkey "
        "PRIMARY KEY (term_id, chunk_id) INCLUDE (tf, len)",
        "index:posting_chunk": "CREATE INDEX search_posting_chunk ON search_posting (chunk_id)",
        "index:hnsw": hnsw_index_sql(HNSW_M, HNSW_EF_CONSTRUCTION),
        "index:postings_blocks": postings_blocks,
        "index:vacuum_analyze": "",
    }
    seconds: dict[str, float] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT step, seconds FROM scale_step")
        done = dict(cursor.fetchall())
        if packing.pending():  # a migration dropped the blocks (a new encoding): pack again, then vacuum
            cursor.execute("TRUNCATE search_postingblock")  # the full pack rewrites them all: free their space
            cursor.execute("DELETE FROM scale_step WHERE step IN ('index:postings_blocks', 'index:vacuum_analyze')")
            done.pop("index:postings_blocks", None)
            done.pop("index:vacuum_analyze", None)
        cursor.execute("SET maintenance_work_mem = %s", [MAINTENANCE_WORK_MEM])
        cursor.execute("SET max_parallel_maintenance_workers = 2")
        for step, sql in steps.items():
            if step in done:
                seconds[step] = done[step]
                continue
            log(f"{step} ...")
            began = time.perf_counter()
            if callable(sql):
                sql()
            elif sql:
                cursor.execute(sql)
            else:
                for table in (
                    "search_posting",
                    "search_postingblock",
                    "search_term",
                    "ingest_chunk",
                    "ingest_document",
                    "ingest_document_access_groups",
                ):
                    cursor.execute(f"VACUUM ANALYZE {table}")
            seconds[step] = time.perf_counter() - began
            cursor.execute("INSERT INTO scale_step (step, seconds) VALUES (%s, %s)", [step, seconds[step]])
            log(f"{step}: {seconds[step]:.0f} s")
    return seconds


def database_build(passages: int, log: Callable[[str], None] = print) -> dict:
    """Everything up to a searchable `kb_scale_<passages>` database; each stage skipped when done."""
    from django.db import connection

    from kb.evaluation import beir

    root = data_dir()
    began = time.perf_counter()
    source = source_ensure(root, log)
    parts = parts_ensure(root, source, passages, log)
    queries_ensure(root)
    generated_s = time.perf_counter() - began
    name = database_name(passages)
    with beir.isolated_index(name, log=log):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
            _progress_tables(cursor)
            missing = sorted(set(range(parts)) - _loaded_parts(cursor))
            if missing:
                _indexes_drop(cursor)
        groups = _groups_ensure()
        load_began = time.perf_counter()
        for done, part in enumerate(missing, 1):
            part_load(part, groups, root)
            if done % 10 == 0 or done == len(missing):
                rate = done * PART_SIZE / (time.perf_counter() - load_began)
                log(f"{name}: loaded {done} of {len(missing)} parts ({rate:.0f} passages/s)")
        with connection.cursor() as cursor:
            for table in ("ingest_document", "ingest_chunk"):
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            cursor.execute("SELECT sum(seconds) FROM scale_part")
            load_s = cursor.fetchone()[0]
        index_s = indexes_build(log)
    report = {
        "passages": passages,
        "database": name,
        "generate_s_this_run": round(generated_s, 1),
        "load_rows_and_postings_s": round(load_s or 0.0, 1),
        **{key.replace("index:", "build_") + "_s": round(value, 1) for key, value in index_s.items()},
    }
    _json_save(root / f"build-{passages}.json", report)
    return report


# --- measuring --------------------------------------------------------------------------------------------

K = 8  # what the answer pipeline asked search for when these figures were measured (12 since stop 36)
RECALL_AT = 10
# One untimed pass over every query first (its times are reported apart, as the first pass): the timed passes
# then measure a server in use, whose indexes are in memory. After a build or a repack the pages are on disk,
# and at 1M, right after a full pack, the first pass's 95th percentile was 114 ms against 83 (5 Dec, employee).
RECALL_EVERY = 3  # exact scans are slow at 1M: recall and BM25 agreement on every third query (103 queries)
EXACT_BM25_SQL = """
WITH stats AS (
    SELECT greatest(chunk_count, 1)::float8 AS n,
           greatest(total_length::float8 / greatest(chunk_count, 1), 1e-9) AS avgdl
    FROM search_indexstate WHERE id = 1
),
query_terms AS (
    SELECT t.id, q.qtf, ln(1 + (s.n - t.df + 0.5) / (t.df + 0.5)) AS idf
    FROM unnest(%(terms)s::text[], %(qtf)s::int[]) AS q(text, qtf)
    JOIN search_term t ON t.text = q.text CROSS JOIN stats s WHERE t.df > 0
),
scored AS (
    SELECT p.chunk_id, sum(qt.qtf * qt.idf * p.tf * (%(k1)s + 1)
               / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.len / s.avgdl))) AS score
    FROM query_terms qt JOIN search_posting p ON p.term_id = qt.id CROSS JOIN stats s
    GROUP BY p.chunk_id
)
SELECT scored.chunk_id FROM scored
JOIN ingest_chunk c ON c.id = scored.chunk_id JOIN ingest_document ON ingest_document.id = c.document_id
WHERE {allowed}
ORDER BY scored.score DESC, scored.chunk_id
LIMIT %(limit)s
"""
EXACT_VECTOR_SQL = """
SELECT c.id FROM ingest_chunk c JOIN ingest_document ON ingest_document.id = c.document_id
WHERE {allowed} ORDER BY (c.embedding <=> %(vector)s::vector) + 0, c.id LIMIT %(limit)s
"""


def _summary(values: Sequence[float]) -> dict:
    from kb.evaluation.beir import percentile

    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(percentile(values, 0.95), 2)}


def exact_bm25(terms, scope, limit: int) -> list[int]:
    """Exact BM25 scoring every posting, permission filter applied to all scored chunks (no pool)."""
    from django.conf import settings
    from django.db import connection

    allowed, params = scope.sql()
    texts = sorted(terms)
    with connection.cursor() as cursor:
        cursor.execute(
            EXACT_BM25_SQL.format(allowed=allowed),
            {
                "terms": texts,
                "qtf": [terms[t] for t in texts],
                "k1": settings.KB_BM25_K1,
                "b": settings.KB_BM25_B,
                "limit": limit,
                **params,
            },
        )
        return [row[0] for row in cursor.fetchall()]


def exact_vector(vector: np.ndarray, scope, limit: int) -> list[int]:
    from django.db import connection

    from kb.search.retrieval import vector_literal

    allowed, params = scope.sql()
    with connection.cursor() as cursor:
        cursor.execute(
            EXACT_VECTOR_SQL.format(allowed=allowed), {"vector": vector_literal(vector), "limit": limit, **params}
        )
        return [row[0] for row in cursor.fetchall()]


def scope_measure(scope, queries: list[dict], vectors: np.ndarray) -> dict:
    """Latency, recall and agreement of kb's own search in one read scope."""
    from django.conf import settings
    from django.db import transaction

    from kb.search.analyzer import analyze
    from kb.search.retrieval import bm25_leg, search_in_scope, vector_leg

    texts = [q["text"] for q in queries]
    first = [search_in_scope(t, scope, K, query_vector=v) for t, v in zip(texts, vectors, strict=True)]
    given = [search_in_scope(t, scope, K, query_vector=v) for t, v in zip(texts, vectors, strict=True)]
    from_text = [search_in_scope(t, scope, K) for t in texts]
    depth = max(K, settings.KB_FUSION_TOP_N)
    recall, walk_recall, exact_times = [], [], []
    terms_all = analyze(texts[::RECALL_EVERY])  # exact BM25 scores every posting: seconds a query at 1M
    for index, terms in zip(range(0, len(queries), RECALL_EVERY), terms_all, strict=True):
        with transaction.atomic():
            # The leg as search runs it (with the BM25 leg's chunks, `vector_leg(also=)`), and the walk alone.
            found = [hit.chunk_id for hit in bm25_leg(terms, scope, depth)] if terms else []
            approximate = [hit.chunk_id for hit in vector_leg(vectors[index], scope, depth, also=found)][:RECALL_AT]
            walk = [hit.chunk_id for hit in vector_leg(vectors[index], scope, depth)][:RECALL_AT]
        began = time.perf_counter()
        exact = exact_vector(vectors[index], scope, RECALL_AT)
        exact_times.append((time.perf_counter() - began) * 1000)
        recall.append(len(set(approximate) & set(exact)) / max(1, len(exact)))
        walk_recall.append(len(set(walk) & set(exact)) / max(1, len(exact)))
    identical, overlap, bm25_times = 0, [], []
    for terms in terms_all:
        began = time.perf_counter()
        leg = [hit.chunk_id for hit in bm25_leg(terms, scope, depth)][:RECALL_AT]
        bm25_times.append((time.perf_counter() - began) * 1000)
        exact = exact_bm25(terms, scope, RECALL_AT)
        identical += leg == exact
        overlap.append(len(set(leg) & set(exact)) / max(1, len(exact)))
    return {
        "queries": len(queries),
        "hybrid_search_ms": _summary([r.timings.total_ms for r in given]),
        "hybrid_search_first_pass_ms": _summary([r.timings.total_ms for r in first]),
        "hybrid_with_embedding_ms": _summary([r.timings.total_ms for r in from_text]),
        "query_embedding_ms": _summary([r.timings.embed_ms for r in from_text]),
        "vector_leg_ms": _summary([r.timings.vector_ms for r in given]),
        "bm25_leg_ms": _summary([r.timings.bm25_ms for r in given]),
        "fetch_ms": _summary([r.timings.fetch_ms for r in given]),
        "vector_recall_at_10": round(statistics.mean(recall), 4),
        "vector_recall_queries": len(recall),
        "vector_recall_min": round(min(recall), 2),
        "vector_walk_recall_at_10": round(statistics.mean(walk_recall), 4),
        "vector_walk_recall_min": round(min(walk_recall), 2),
        "vector_exact_scan_ms": _summary(exact_times),
        "bm25_top10_identical": round(identical / len(terms_all), 4),
        "bm25_agreement_queries": len(terms_all),
        "bm25_top10_overlap": round(statistics.mean(overlap), 4),
        "bm25_leg_alone_ms": _summary(bm25_times),
        "hits_short": sum(len(r.hits) < K for r in given),
    }


def _rss_postgres() -> dict:
    """RSS (and unique memory: shared buffers counted once) of the server's processes."""
    import psutil
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    postmaster = psutil.Process(backend).parent()
    processes = [postmaster, *postmaster.children()]
    rss = uss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        uss += info.uss
    return {
        "processes": len(processes),
        "rss_sum_mb": round(rss / 2**20),
        "uss_sum_mb": round(uss / 2**20),
        "backend_rss_mb": round(psutil.Process(backend).memory_info().rss / 2**20),
    }


SIZED_RELATIONS = (
    "ingest_chunk",
    "chunk_embedding_hnsw",
    "search_posting",
    "search_posting_pkey",
    "search_posting_chunk",
    "search_postingblock",
    "search_term",
    "ingest_document",
)


def sizes() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        result = {"database_mb": round(cursor.fetchone()[0] / 2**20)}
        for relation in SIZED_RELATIONS:
            cursor.execute("SELECT pg_total_relation_size(to_regclass(%s))", [relation])
            size = cursor.fetchone()[0]
            result[f"{relation}_mb"] = None if size is None else round(size / 2**20)
        cursor.execute("SELECT count(*) FROM search_posting")
        result["postings"] = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM search_term")
        result["terms"] = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        result["shared_buffers"] = cursor.fetchone()[0]
    return result


def query_every(passages: int) -> int:
    """Measure on every n-th query: at 1M all 308 queries (each searched twice, a third of them also scanned
    exactly) take over an hour, since BM25 reads ~10x the postings of 100k; every third took 35 min (3 Dec)."""
    return 3 if passages >= 1_000_000 else 1


def measure(passages: int, log: Callable[[str], None] = print, every: int | None = None) -> dict:
    """Measure `kb_scale_<passages>` (built by database_build) as an employee and as an admin, on every
    `every`-th query (default: `query_every`)."""
    import resource

    import psutil
    from django.conf import settings
    from django.db import connection

    from ingest.models import ReadScope
    from kb.evaluation import beir
    from kb.search import embeddings

    embeddings.use_threads(settings.KB_WEB_TORCH_THREADS)  # questions are embedded as in the web process
    root = data_dir()
    queries, vectors = queries_ensure(root)
    every = every or query_every(passages)
    queries, vectors = queries[::every], vectors[::every]
    name = database_name(passages)
    began = time.perf_counter()
    with beir.isolated_index(name, log=log):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM ingest_chunk")
            chunks = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FILTER (WHERE step LIKE 'index:%%') FROM scale_step")
            if chunks != passages or cursor.fetchone()[0] < 5:
                raise RuntimeError(
                    f"{name} is not built ({chunks:,} chunks): run python -m kb.evaluation.scale --passages {passages}"
                )
        employee = ReadScope(group_ids=reader_group_ids())
        with connection.cursor() as cursor:
            allowed, params = employee.sql()
            cursor.execute(f"SELECT avg(({allowed})::int) FROM ingest_document", params)
            readable_share = float(cursor.fetchone()[0])
        result = {
            "passages": passages,
            "database": name,
            "readable_share_employee": round(readable_share, 3),
            "query_every": every,
        }
        for label, scope in (("employee", employee), ("admin", ReadScope.all_documents())):
            log(f"{name}: measuring as {label}")
            result[label] = scope_measure(scope, queries, vectors)
        result["sizes"] = sizes()
        result["rss_postgres"] = _rss_postgres()
    build_path = root / f"build-{passages}.json"
    result["build"] = json.loads(build_path.read_text()) if build_path.exists() else None
    result["rss_measuring_process_mb"] = round(psutil.Process().memory_info().rss / 2**20)
    result["peak_rss_measuring_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["settings"] = {
        "hnsw_ef_search": settings.KB_HNSW_EF_SEARCH,
        "hnsw_max_scan_tuples": settings.KB_HNSW_MAX_SCAN_TUPLES,
        "hnsw_m": HNSW_M,
        "hnsw_ef_construction": HNSW_EF_CONSTRUCTION,
        "fusion_top_n": settings.KB_FUSION_TOP_N,
        "bm25_filter_pool": getattr(settings, "KB_BM25_FILTER_POOL", None),
        "k": K,
    }
    result["machine"] = {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    result["measure_s"] = round(time.perf_counter() - began, 1)
    return result


# --- how close the synthetic vectors are to the model's ---------------------------------------------------

FIDELITY_SAMPLE = 120


def fidelity(log: Callable[[str], None] = print) -> dict:
    """Cosine between a passage's synthetic vector and the model's own embedding of its indexed text
    (title, heading path and text, as ingestion embeds it), on a seeded sample of the first part."""
    from ingest.services import indexed_text
    from kb.search import embeddings

    root = data_dir()
    rows, vectors = part_read(root, 0)
    picked = sorted(random.Random(f"{SEED}/fidelity").sample(range(len(rows)), FIDELITY_SAMPLE))
    texts = [indexed_text(rows[i]["title"], rows[i]["text"], rows[i]["heading_path"]) for i in picked]
    model = embeddings.embed(texts, batch_size=16)
    synthetic = vectors[picked]
    cosine = (model * synthetic).sum(axis=1)
    # Do the synthetic vectors rank passages as the model does? Nearest 10 among the sample, both ways.
    overlap = []
    for index in range(len(picked)):
        by_model = set(np.argsort(-(model @ model[index]))[1:11].tolist())
        by_synthetic = set(np.argsort(-(synthetic @ synthetic[index]))[1:11].tolist())
        overlap.append(len(by_model & by_synthetic) / 10)
    result = {
        "sample": len(picked),
        "cosine_mean": round(float(cosine.mean()), 4),
        "cosine_p05": round(float(np.percentile(cosine, 5)), 4),
        "cosine_min": round(float(cosine.min()), 4),
        "neighbour_overlap_at_10": round(statistics.mean(overlap), 3),
    }
    _json_save(root / "fidelity.json", result)
    log(f"fidelity: {result}")
    return result


# --- halfvec ---------------------------------------------------------------------------------------------

# The float32 index the product had before its halfvec one (ingest migration 0009), for the comparison.
FLOAT32_INDEX = "chunk_vector_hnsw"


def halfvec_evaluate(passages: int, log: Callable[[str], None] = print) -> dict:
    """The product's HNSW index on halfvec copies of the vectors next to one on the float32 vectors, in a copy of
    `kb_scale_<passages>`.

    Both indexes are built there in turn (same settings), then each leg answers the queries in the employee's scope
    with the product's iterative-scan settings; recall is against the exact float32 scan.
    """
    from django.conf import settings
    from django.db import connection, transaction

    from ingest.models import ReadScope
    from kb.evaluation import beir
    from kb.search.retrieval import (
        HNSW_INDEX,
        VECTOR_SQL,
        hnsw_index_sql,
        hnsw_walk_configure,
        vector_leg,
        vector_literal,
    )

    root = data_dir()
    queries, vectors = queries_ensure(root)
    source, name = database_name(passages), database_name(passages) + "_halfvec"
    with beir._server_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if not cursor.fetchone():
            cursor.execute(f"CREATE DATABASE {name} TEMPLATE {source}")  # needs no one else connected to it
            log(f"copied {source} to {name}")
    result: dict = {"passages": passages, "database": name}
    with beir.default_database(name):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
            cursor.execute("SET maintenance_work_mem = %s", [MAINTENANCE_WORK_MEM])
            cursor.execute("SET max_parallel_maintenance_workers = 2")
            # A copy made by the comparison's first form holds a halfvec column and its index: not measured now.
            cursor.execute("DROP INDEX IF EXISTS chunk_half_hnsw")
            cursor.execute("ALTER TABLE ingest_chunk DROP COLUMN IF EXISTS embedding_half")
            for label, index, sql in (
                ("halfvec", HNSW_INDEX, hnsw_index_sql(HNSW_M, HNSW_EF_CONSTRUCTION)),
                (
                    "vector",
                    FLOAT32_INDEX,
                    f"CREATE INDEX {FLOAT32_INDEX} ON ingest_chunk USING hnsw (embedding vector_cosine_ops) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})",
                ),
            ):
                cursor.execute(f"DROP INDEX IF EXISTS {index}")
                began = time.perf_counter()
                cursor.execute(sql)
                cursor.execute("SELECT pg_relation_size(%s)", [index])
                result[label] = {
                    "build_s": round(time.perf_counter() - began, 1),
                    "index_mb": round(cursor.fetchone()[0] / 2**20),
                }
                log(f"{label}: {result[label]}")
            cursor.execute("VACUUM ANALYZE ingest_chunk")
        scope = ReadScope(group_ids=reader_group_ids())
        allowed, params = scope.sql()
        depth = max(K, settings.KB_FUSION_TOP_N)

        float32_sql = VECTOR_SQL.format(allowed=allowed, order="c.embedding <=> %(vector)s::vector")

        def float32_leg(vector: np.ndarray) -> list[int]:
            with connection.cursor() as cursor:
                hnsw_walk_configure(cursor)
                cursor.execute(float32_sql, {"vector": vector_literal(vector), "limit": depth, "also": [], **params})
                return [row[0] for row in cursor.fetchall()]

        legs = {"halfvec": lambda v: [h.chunk_id for h in vector_leg(v, scope, depth)], "vector": float32_leg}
        exact = [exact_vector(vectors[i], scope, RECALL_AT) for i in range(0, len(queries), RECALL_EVERY)]
        for label, leg in legs.items():
            times: list[float] = []
            recall: list[float] = []
            for round_ in range(2):  # the first round warms the cache
                times = []
                for position, vector in enumerate(vectors):
                    with transaction.atomic():
                        began = time.perf_counter()
                        ids = leg(vector)
                        times.append((time.perf_counter() - began) * 1000)
                    if round_ and position % RECALL_EVERY == 0:
                        truth = exact[position // RECALL_EVERY]
                        recall.append(len(set(ids[:RECALL_AT]) & set(truth)) / max(1, len(truth)))
            result[label].update(_summary(times), recall_at_10=round(statistics.mean(recall), 4))
            log(f"{label}: {result[label]}")
    _json_save(root / f"halfvec-{passages}.json", result)
    return result


# --- the report -------------------------------------------------------------------------------------------

# (label, path into a size's result) plotted against passages.
FIGURES = (
    ("hybrid p95, no embedding (ms)", ("employee", "hybrid_search_ms", "p95_ms")),
    ("hybrid p50, no embedding (ms)", ("employee", "hybrid_search_ms", "p50_ms")),
    ("hybrid p95 with embedding (ms)", ("employee", "hybrid_with_embedding_ms", "p95_ms")),
    ("vector leg p95 (ms)", ("employee", "vector_leg_ms", "p95_ms")),
    ("BM25 leg p95 (ms)", ("employee", "bm25_leg_ms", "p95_ms")),
    ("admin hybrid p95, no embedding (ms)", ("admin", "hybrid_search_ms", "p95_ms")),
    ("database size (MB)", ("sizes", "database_mb")),
    ("HNSW index (MB)", ("sizes", "chunk_embedding_hnsw_mb")),
    ("postings + indexes (MB)", ("sizes", "search_posting_mb")),
    ("HNSW build (s)", ("build", "build_hnsw_s")),
    ("rows + postings load (s)", ("build", "load_rows_and_postings_s")),
    ("postgres RSS sum (MB)", ("rss_postgres", "rss_sum_mb")),
)


def _dig(value, path: Sequence[str]):
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _flatten(value, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _flatten(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _loglog_svg(series: dict[str, list[tuple[float, float]]]) -> str:
    """A log-log plot of each series against passages, as inline SVG (no plotting library)."""
    width, height, margin = 760, 420, 60
    points = [p for values in series.values() for p in values if p[0] > 0 and p[1] > 0]
    if not points:
        return "<p>No figures yet.</p>"
    xs = [math.log10(p[0]) for p in points]
    ys = [math.log10(p[1]) for p in points]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs) - 1e-9)
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys) - 1e-9)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def sx(x: float) -> float:
        return margin + (math.log10(x) - x0) / (x1 - x0) * (width - 2 * margin - 200)

    def sy(y: float) -> float:
        return height - margin - (math.log10(y) - y0) / (y1 - y0) * (height - 2 * margin)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for decade in range(x0, x1 + 1):
        x = sx(10**decade)
        parts.append(f'<line x1="{x:.1f}" y1="{margin}" x2="{x:.1f}" y2="{height - margin}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - margin + 15}" text-anchor="middle">1e{decade}</text>')
    for decade in range(y0, y1 + 1):
        y = sy(10**decade)
        parts.append(f'<line x1="{margin}" y1="{y:.1f}" x2="{width - margin - 200}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{margin - 5}" y="{y + 4:.1f}" text-anchor="end">1e{decade}</text>')
    parts.append(f'<text x="{(width - 200) / 2}" y="{height - 15}" text-anchor="middle">passages</text>')
    colours = (
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
        "#000",
        "#aa0",
    )
    for number, (label, values) in enumerate(series.items()):
        colour = colours[number % len(colours)]
        good = sorted(p for p in values if p[0] > 0 and p[1] > 0)
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y in good:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                f"<title>{_escape(label)}: {y:g} at {x:,.0f}</title></circle>"
            )
        ly = margin + 14 * number
        parts.append(f'<rect x="{width - 250}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - 235}" y="{ly + 1}">{_escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def report_write(out_dir: Path, result: dict | None = None) -> dict:
    """Merge `result` into scale.json (one entry per size) and write scale.html from it."""
    json_path, html_path = out_dir / "scale.json", out_dir / "scale.html"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = json.loads(json_path.read_text()) if json_path.exists() else {"sizes": {}}
    if result is not None:
        report["sizes"][str(result["passages"])] = result
    extras = {"vector_fidelity": data_dir() / "fidelity.json"}
    extras.update({f"halfvec_{path.stem.split('-')[1]}": path for path in data_dir().glob("halfvec-*.json")})
    for key, path in extras.items():
        if path.exists():
            report[key] = json.loads(path.read_text())
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    sizes_sorted = sorted(report["sizes"].values(), key=lambda r: r["passages"])
    series = {
        label: [(r["passages"], _dig(r, path)) for r in sizes_sorted if isinstance(_dig(r, path), int | float)]
        for label, path in FIGURES
    }
    html = ["<!doctype html><meta charset='utf-8'><title>kb scale bench</title>", "<h1>kb at scale</h1>"]
    html.append("<p>Synthetic passages from SciFact sentences (kb/evaluation/scale.py); kb's own search SQL.</p>")
    html.append("<h2>Growth (log-log)</h2>" + _loglog_svg(series))
    for key in sorted(k for k in report if k != "sizes"):
        html.append(f"<h2>{_escape(key)}</h2><table border='1' cellpadding='3'>")
        html.extend(f"<tr><td>{_escape(k)}</td><td>{_escape(str(v))}</td></tr>" for k, v in _flatten(report[key]))
        html.append("</table>")
    for r in sizes_sorted:
        html.append(f"<h2>{r['passages']:,} passages</h2><table border='1' cellpadding='3'>")
        html.extend(f"<tr><td>{_escape(k)}</td><td>{_escape(str(v))}</td></tr>" for k, v in _flatten(r))
        html.append("</table>")
    html_path.write_text("\n".join(html) + "\n")
    return report


def bench_dir() -> Path:
    from django.conf import settings

    return Path(settings.BASE_DIR) / "var" / "bench"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000, help="corpus size, a multiple of 10,000")
    parser.add_argument("--measure", action="store_true", help="measure the built database, write var/bench/scale.*")
    parser.add_argument("--every", type=int, help="measure on every N-th query (default: 3 from 1M, else 1)")
    parser.add_argument("--fidelity", action="store_true", help="cosine of the synthetic vectors to the model's")
    parser.add_argument("--halfvec", action="store_true", help="compare halfvec with vector in a copy of the database")
    args = parser.parse_args(argv)
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    django.setup()

    def log(message: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)

    log(json.dumps(database_build(args.passages, log)))
    if args.measure:
        result = measure(args.passages, log, every=args.every)
        report_write(bench_dir(), result)
        log(json.dumps(result))
    if args.fidelity:
        fidelity(log)
    if args.halfvec:
        log(json.dumps(halfvec_evaluate(args.passages, log)))


if __name__ == "__main__":
    main()
