"""The corpus an answer evaluation runs on, in an isolated index that users never see.

A corpus is a folder of documents (PDF, Word, HTML, Markdown, text: parsed, chunked, embedded and indexed by
the product's own parser, chunker, embedding model and analyzer) or a BEIR `corpus.jsonl` (loaded as
`kb.evaluation.beir` loads it, so the index is the very one `evaluate_retrieval` and the gate calibration
build). Either goes into its own database on the same server, named by a fingerprint of the corpus bytes,
the embedding model, the chunk settings and the analyzer (`beir.index_fingerprint`): built once, reused
while nothing that shapes it changes, resumed document by document when a build was interrupted. The
product's own documents, exchanges and caches are never read or written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from ingest.models import Chunk, Document, DocumentStatus
from ingest.parsers import ParseError, sniff_media_type
from ingest.parsers.sniff import SUPPORTED_EXTENSIONS
from ingest.services import (
    chunk_from_draft,
    chunks_of,
    indexed_text,
    injection_flags,
    parse_upload,
    title_from_filename,
)
from kb.accounts.roles import Role
from kb.accounts.services import user_role_add
from kb.evaluation import beir
from kb.search import embeddings, packing
from kb.search.analyzer import analyze
from kb.search.indexing import index_apply

# The file types the product ingests; other files in a corpus folder (scripts, notes) are left out.
DOCUMENT_SUFFIXES = SUPPORTED_EXTENSIONS  # every format kb reads (CSV, spreadsheets, slides, e-mail, scans too)
# Bumped when the way a folder becomes an index changes here: old evaluation indexes are then rebuilt.
FOLDER_LOADER_VERSION = 3  # 2: passages flagged for injection as at ingest; 3: every format kb reads
SNIFF_BYTES = 64 * 1024  # what the upload service reads to tell a file's type
EVALUATION_USERNAME = "kb-evaluation"
FOLDER, BEIR = "folder", "beir"


class CorpusError(ValueError):
    """A corpus that cannot be evaluated on; the message says which file and why."""


@dataclass(frozen=True)
class CorpusSource:
    path: Path
    kind: str  # FOLDER or BEIR
    files: tuple[str, ...]  # a folder's documents, as paths relative to it
    sha256: str  # of everything that is indexed
    database: str  # the isolated index's database, named by the fingerprint of the index


def _source(path: Path, kind: str, files: tuple[str, ...], sha256: str) -> CorpusSource:
    # Named after the default database, so this must run before the isolated one stands in for it.
    database = beir.eval_database_name(beir.index_fingerprint(sha256))
    return CorpusSource(path=path, kind=kind, files=files, sha256=sha256, database=database)


def corpus_source(path: Path) -> CorpusSource:
    """Describe the corpus at `path`: a folder of documents or a BEIR corpus.jsonl."""
    if path.is_file():
        return _source(path, BEIR, (), beir.file_sha256(path))
    if not path.is_dir():
        raise CorpusError(f"{path}: no such folder or file")
    files = tuple(
        sorted(
            str(found.relative_to(path).as_posix())
            for found in path.rglob("*")
            if found.is_file()
            and found.suffix.lower() in DOCUMENT_SUFFIXES
            and not any(part.startswith(".") for part in found.relative_to(path).parts)
        )
    )
    if not files:
        raise CorpusError(f"{path}: no documents ({', '.join(sorted(DOCUMENT_SUFFIXES))}) in this folder")
    digest = hashlib.sha256(f"folder-loader:{FOLDER_LOADER_VERSION}\n".encode())
    for name in files:
        digest.update(f"{name}\t{beir.file_sha256(path / name)}\n".encode())
    return _source(path, FOLDER, files, digest.hexdigest())


def corpus_index(source: CorpusSource, *, log: Callable[[str], None] = lambda _: None) -> dict:
    """Add what the (current default, isolated) database lacks of the corpus; describe the index."""
    if source.kind == BEIR:
        try:
            total = sum(1 for _ in beir.corpus_load(source.path))
            added, _ = beir.corpus_ingest(
                beir.corpus_load(source.path),
                total=total,
                progress=lambda done, total, chunks: log(f"embedded and indexed {done}/{total} documents"),
            )
        except beir.BeirFormatError as exc:
            raise CorpusError(str(exc)) from None
    else:
        present = set(Document.objects.values_list("filename", flat=True))
        added = 0
        for name in source.files:
            if name in present:
                continue
            chunks = _ingest_file(source.path / name, name)
            added += 1
            log(f"indexed {name} ({chunks} passages)")
        packing.postings_pack()
    return {
        "database": source.database,
        "documents": Document.objects.count(),
        "chunks": Chunk.objects.count(),
        "added_now": added,
        "embedding_model": embeddings.model_id(),
    }


def _ingest_file(path: Path, name: str) -> int:
    """Parse, chunk, embed and index one file as the product's ingestion does, in one transaction."""
    data = path.read_bytes()
    try:
        media_type = sniff_media_type(data[:SNIFF_BYTES], name)
        parsed = parse_upload(data, media_type)
    except ParseError as exc:
        raise CorpusError(f"{path}: {exc.message}") from None
    drafts = chunks_of(parsed)
    if not drafts:
        raise CorpusError(f"{path}: no text was found in this file")
    # As an upload without a title: the document's own title when it has one, else the file name's.
    title = ((parsed.title or "").strip() or title_from_filename(name))[:300]
    inputs = [indexed_text(title, draft.text, draft.heading_path) for draft in drafts]
    vectors = embeddings.embed(inputs)
    terms = analyze(inputs)
    # Flagged as at ingest, so that the evaluation sees passages marked untrusted as users' answers do.
    injections = injection_flags([draft.text for draft in drafts], vectors)
    now = timezone.now()
    with transaction.atomic():
        document = Document.objects.create(
            title=title,
            filename=name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            media_type=media_type,
            status=DocumentStatus.READY,
            searchable=True,
            embedding_model=embeddings.model_id(),
            ready_at=now,
            chunks_total=len(drafts),
            chunks_embedded=len(drafts),
            page_count=parsed.page_count,
            extracted_chars=len(parsed.text),
        )
        created = Chunk.objects.bulk_create(
            [
                chunk_from_draft(document, draft, vector, flags)
                for draft, vector, flags in zip(drafts, vectors, injections, strict=True)
            ]
        )
        index_apply(add=[(chunk.id, counts) for chunk, counts in zip(created, terms, strict=True)])
    return len(created)


def evaluation_user():
    """The account the evaluation asks as (in the isolated database): it may ask, and read every document."""
    users = get_user_model()
    user, created = users.objects.get_or_create(username=EVALUATION_USERNAME)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    for role in (Role.EMPLOYEE, Role.KNOWLEDGE_ADMIN):
        user_role_add(user=user, role=role)
    return users.objects.get(pk=user.pk)  # without the permission cache of the user before its roles
