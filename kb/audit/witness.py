"""The witness: every signed checkpoint, appended outside the database (KB_AUDIT_WITNESS_DIR).

One JSON line per checkpoint, `{"checkpoint": {...}, "signature": "..."}`, in one file per month
(checkpoints-YYYY-MM.jsonl), written with O_APPEND in a single write and fsync'd before the call returns.
With KB_AUDIT_WITNESS_SYSLOG each line also goes to a syslog host, which keeps a copy the machine itself
cannot take back; `manage.py audit_verify --witness PATH` checks the log against such a copy.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from kb.audit import chain

logger = logging.getLogger(__name__)

FILE_GLOB = "checkpoints-*.jsonl"
SYSLOG_TAG = "kb-audit-checkpoint: "


@dataclass(frozen=True)
class WitnessLine:
    """One line read back: the checkpoint and its signature, or why the line could not be read."""

    source: str  # file:line, for the report
    checkpoint: dict | None
    signature: str = ""
    error: str = ""


def witness_file(directory: Path, signed_at: str) -> Path:
    """The month's file for a checkpoint signed at `signed_at` (ISO 8601, UTC)."""
    return directory / f"checkpoints-{signed_at[:7]}.jsonl"


def witness_text(checkpoint: dict, signature: str) -> str:
    return chain.canonical_json({"checkpoint": checkpoint, "signature": signature})


def witness_append(checkpoint: dict, signature: str, *, directory: Path | None = None) -> Path:
    """Append the line and fsync it; raises OSError when the witness cannot be written."""
    directory = directory or settings.KB_AUDIT_WITNESS_DIR
    text = witness_text(checkpoint, signature)
    new_folder = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = witness_file(directory, checkpoint["signed_at"])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (text + "\n").encode("utf-8"))  # one write: lines of concurrent writers never interleave
        os.fsync(fd)
    finally:
        os.close(fd)
    if new_folder:
        _fsync_dir(directory)
    _fsync_dir(path.parent)
    if settings.KB_AUDIT_WITNESS_SYSLOG:
        _syslog(settings.KB_AUDIT_WITNESS_SYSLOG).info(SYSLOG_TAG + text)
    return path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=2)
def _syslog(url: str) -> logging.Logger:
    parts = urlsplit(url)
    socktype = socket.SOCK_STREAM if parts.scheme == "tcp" else socket.SOCK_DGRAM
    handler = logging.handlers.SysLogHandler(
        address=(parts.hostname or "localhost", parts.port or 514),
        facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
        socktype=socktype,
    )
    handler.append_nul = False  # the line stays exactly the JSON that was signed
    sender = logging.getLogger("kb.audit.witness.syslog")
    sender.propagate = False
    sender.setLevel(logging.INFO)
    sender.addHandler(handler)
    return sender


def witness_read(location: Path | None = None) -> list[WitnessLine]:
    """Every line of the witness at `location` (a folder of month files, or one file such as a copy kept by
    a syslog host, whose lines may carry a syslog prefix before the JSON), oldest file first."""
    location = location or settings.KB_AUDIT_WITNESS_DIR
    if location.is_dir():
        files = sorted(location.glob(FILE_GLOB))
    elif location.exists():
        files = [location]
    else:
        files = []
    lines: list[WitnessLine] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, raw in enumerate(handle, start=1):
                lines.extend(_parse(f"{path.name}:{number}", raw))
    return lines


def _parse(source: str, raw: str) -> list[WitnessLine]:
    start = raw.find('{"checkpoint"')
    if start < 0:
        return [] if not raw.strip() or SYSLOG_TAG.strip() not in raw else [WitnessLine(source, None, error="no JSON")]
    try:
        record = json.loads(raw[start:].rstrip("\x00\r\n "))
        checkpoint, signature = record["checkpoint"], record["signature"]
        if not isinstance(checkpoint, dict) or not isinstance(signature, str):
            raise TypeError
        int(checkpoint["last_seq"]), str(checkpoint["last_hash"]), str(checkpoint["signed_at"])
    except (ValueError, KeyError, TypeError):
        return [WitnessLine(source, None, error="not a checkpoint line (cut short or altered)")]
    return [WitnessLine(source, checkpoint, signature)]


def witness_holds(checkpoint: dict, signature: str, *, directory: Path | None = None) -> bool:
    """Whether the month file of this checkpoint has its line (for the audit page: one file, not all)."""
    directory = directory or settings.KB_AUDIT_WITNESS_DIR
    path = witness_file(directory, checkpoint["signed_at"])
    try:
        return signature.encode("ascii") in path.read_bytes()
    except OSError:
        return False
