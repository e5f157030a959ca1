"""The hash chain: what is hashed, and how a value is made into the JSON that PostgreSQL stores unchanged.

Each event's hash is sha256(prev_hash + canonical JSON of its content), the content being every column but
the two hashes. Canonical JSON: keys sorted, no spaces, UTF-8 (not \\u escapes), datetimes as ISO 8601 in
UTC with microseconds. A verifier needs nothing but this module's rules and an export.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings

GENESIS = "0" * 64  # the prev_hash of the first event ever written
CONTENT_FIELDS = ("seq", "kind", "created_at", "actor_id", "actor_username", "exchange_id", "document_ids", "data")
# A stored event as verification and export read it: its content, then the chain links.
ROW_FIELDS = (*CONTENT_FIELDS, "prev_hash", "hash")

# Credentials that could reach a record through an error message or a pasted question: Anthropic keys,
# kb API tokens (kb_ + 43 url-safe characters) and bearer headers.
_SECRETS = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}|\bkb_[A-Za-z0-9_\-]{30,}|Bearer\s+[A-Za-z0-9._~+/\-]{8,}=*")
REDACTED = "[redacted]"
# Floats from this size on are integers, and PostgreSQL's jsonb gives them back as such (1e+16 comes back as
# 10000000000000000): store them as integers so that what is read back hashes as what was written.
_FLOAT_AS_INT_FROM = 1e16


# One encoder for every call: building one per call costs a sixth of the time of encoding an exchange.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    return _ENCODER.encode(value)


def timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def content_of(
    *,
    seq: int,
    kind: str,
    created_at: dt.datetime | str,
    actor_id: int | None,
    actor_username: str,
    exchange_id: int | None,
    document_ids: Iterable[int],
    data: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": kind,
        "created_at": created_at if isinstance(created_at, str) else timestamp(created_at),
        "actor_id": actor_id,
        "actor_username": actor_username,
        "exchange_id": exchange_id,
        "document_ids": list(document_ids),
        "data": data,
    }


def event_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


def _clean_text(text: str) -> str:
    if "\x00" in text:
        # PostgreSQL text and jsonb cannot hold NUL.
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from a client's broken JSON) cannot be stored as UTF-8; pairs are joined.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    api_key = settings.ANTHROPIC_API_KEY
    if api_key and api_key in text:
        text = text.replace(api_key, REDACTED)
    return _SECRETS.sub(REDACTED, text)


def plain(value: Any) -> Any:
    """`value` as the JSON that jsonb stores and returns unchanged, with credentials redacted.

    Raises TypeError for values that have no JSON form (a bug in the caller, not something to guess at).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        if not math.isfinite(number):
            return None
        if abs(number) >= _FLOAT_AS_INT_FROM:
            return int(number)
        return number + 0.0  # -0.0 becomes 0.0, as in jsonb
    if isinstance(value, dt.datetime):
        return timestamp(value)
    if isinstance(value, dt.date | uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {_clean_text(str(key)): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [plain(item) for item in items]
    raise TypeError(f"{type(value).__name__} has no JSON form for the audit log: convert it first")


def row_hash(row: tuple) -> str:
    """The hash a row read with ROW_FIELDS should carry, recomputed from its content and prev_hash."""
    content = content_of(**dict(zip(CONTENT_FIELDS, row[: len(CONTENT_FIELDS)], strict=True)))
    return event_hash(row[len(CONTENT_FIELDS)], content)
