"""Streamed exports of the audit log: CSV or JSON Lines, with a manifest.

Rows come from a server-side cursor a few thousand at a time and leave in chunks of about 64 KB, so an
export of any size needs the same small memory (tests/bench/test_audit_export_bench.py). An export holds
the events before its own export event, in seq order; each row carries prev_hash and hash, so every row
can be checked on its own: hash = sha256(prev_hash + canonical JSON of the content fields, see chain.py).

The manifest names the row range, count, first and last hash and the sha256 of the file. The command
writes it beside the file (FILE.manifest.json); over HTTP it is the last line (JSONL: {"manifest": {...}};
CSV: a row whose first field is "#manifest" and second the manifest's JSON), and the sha256 covers
every byte before that line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone

from kb.audit import chain
from kb.audit.filters import AuditFilters

# Rows per round trip of the server-side cursor: larger batches stop paying off around here (bench).
EXPORT_FETCH_ROWS = 2000
# Bytes gathered before a chunk is handed on: big enough that per-chunk costs vanish, small enough to
# keep memory flat and a slow client's buffers short.
EXPORT_CHUNK_BYTES = 64 * 1024
FIELDS = chain.ROW_FIELDS
CSV_COLUMNS = (
    "seq",
    "created_at",
    "kind",
    "actor_id",
    "actor_username",
    "exchange_id",
    "document_ids",
    # Readable copies from `data` for people reading the sheet; formula-guarded (see _cell).
    "outcome",
    "model",
    "question",
    "answer",
    # Exact: data and document_ids as canonical JSON, times as in the hash.
    "data",
    "prev_hash",
    "hash",
)
MANIFEST_MARK = "#manifest"
HASH_RULE = (
    "hash = sha256(prev_hash + canonical JSON of {seq, kind, created_at, actor_id, actor_username, exchange_id, "
    "document_ids, data}); canonical JSON: keys sorted, no spaces, UTF-8, times ISO 8601 UTC with microseconds"
)
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
# A spreadsheet runs a cell that starts with one of these as a formula: a question typed as
# =HYPERLINK(...) must not run on a Compliance officer's machine. The exact text stays in `data`.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


class ExportStream:
    """Iterate once for the file's bytes; `manifest` is set when the last row has been written."""

    def __init__(self, *, filters: AuditFilters, format: str, export_seq: int, trailer: bool = False) -> None:
        self.filters = filters
        self.format = format
        self.export_seq = export_seq
        self.trailer = trailer
        self.manifest: dict | None = None

    @property
    def filename(self) -> str:
        return f"audit-{self.export_seq}.{self.format}"

    def rows(self):
        return self.filters.apply().filter(seq__lt=self.export_seq).order_by("seq").values_list(*FIELDS)

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = count = 0
        first: tuple[int, str] | None = None
        last: tuple[int, str] | None = None
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if self.format == "csv":
            writer.writerow(CSV_COLUMNS)
        # A server-side cursor streams only inside a transaction (outside one it is materialised WITH HOLD).
        with transaction.atomic():
            for row in self.rows().iterator(chunk_size=EXPORT_FETCH_ROWS):
                if self.format == "csv":
                    writer.writerow(_csv_row(row))
                else:
                    buffer.write(chain.canonical_json(_record(row)))
                    buffer.write("\n")
                count += 1
                last = (row[0], row[9])
                if first is None:
                    first = last
                if buffer.tell() >= EXPORT_CHUNK_BYTES:
                    chunk = _drain(buffer)
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
        chunk = _drain(buffer)
        digest.update(chunk)
        size += len(chunk)
        self.manifest = {
            "format": self.format,
            "export_seq": self.export_seq,
            "through_seq": self.export_seq - 1,
            "filters": self.filters.as_dict(),
            "rows": count,
            "first_seq": first[0] if first else None,
            "last_seq": last[0] if last else None,
            "first_hash": first[1] if first else None,
            "last_hash": last[1] if last else None,
            "sha256": digest.hexdigest(),
            "bytes": size,
            "created_at": chain.timestamp(timezone.now()),
            "hash_rule": HASH_RULE,
        }
        if self.trailer:
            if self.format == "csv":
                writer.writerow([MANIFEST_MARK, chain.canonical_json(self.manifest)])
            else:
                buffer.write(chain.canonical_json({"manifest": self.manifest}) + "\n")
            chunk += _drain(buffer)
        if chunk:
            yield chunk


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data


def _record(row) -> dict:
    seq, kind, created_at, actor_id, actor_username, exchange_id, document_ids, data, prev_hash, hash_ = row
    record = chain.content_of(
        seq=seq,
        kind=kind,
        created_at=created_at,
        actor_id=actor_id,
        actor_username=actor_username,
        exchange_id=exchange_id,
        document_ids=document_ids,
        data=data,
    )
    record["prev_hash"], record["hash"] = prev_hash, hash_
    return record


def _csv_row(row) -> list:
    seq, kind, created_at, actor_id, actor_username, exchange_id, document_ids, data, prev_hash, hash_ = row
    readable = data if kind == "exchange" else {}
    return [
        seq,
        chain.timestamp(created_at),
        kind,
        "" if actor_id is None else actor_id,
        actor_username,  # exact (hashed); user names cannot hold a formula: letters, digits and @.+-_ only
        "" if exchange_id is None else exchange_id,
        chain.canonical_json(document_ids),
        _cell(str(readable.get("outcome") or "")),
        _cell(str(readable.get("model") or "")),
        _cell(str(readable.get("question") or "")),
        _cell(str(readable.get("answer") or "")),
        chain.canonical_json(data),
        prev_hash,
        hash_,
    ]


def content_from_csv(row: dict[str, str]) -> dict:
    """The hashed content of one CSV row read back with csv.DictReader (what a verifier recomputes)."""
    return chain.content_of(
        seq=int(row["seq"]),
        kind=row["kind"],
        created_at=row["created_at"],
        actor_id=int(row["actor_id"]) if row["actor_id"] else None,
        actor_username=row["actor_username"],
        exchange_id=int(row["exchange_id"]) if row["exchange_id"] else None,
        document_ids=json.loads(row["document_ids"]),
        data=json.loads(row["data"]),
    )


async def _pull(stream: ExportStream) -> AsyncIterator[bytes]:
    """The stream for an ASGI server. Each step runs in this request's database thread (the cursor and its
    transaction live there); a client that goes away closes the generator, which ends the transaction."""
    iterator = iter(stream)

    def step() -> bytes | None:
        return next(iterator, None)

    pull = sync_to_async(step, thread_sensitive=True)
    try:
        while (chunk := await pull()) is not None:
            yield chunk
    finally:
        await sync_to_async(iterator.close, thread_sensitive=True)()  # type: ignore[attr-defined]


def export_response(request, stream: ExportStream) -> StreamingHttpResponse:
    """Under ASGI the body must be an async iterator and under WSGI a sync one: either other kind is first
    read whole into memory by Django."""
    content = _pull(stream) if isinstance(request, ASGIRequest) else iter(stream)
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPES[stream.format])
    response["Content-Disposition"] = f'attachment; filename="{stream.filename}"'
    response["X-Audit-Export-Seq"] = str(stream.export_seq)
    response["Cache-Control"] = "no-store"
    return response
