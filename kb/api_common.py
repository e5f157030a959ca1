"""Shared pieces of the JSON API's schema: error responses (every one is `{"detail": ...}`) and text input."""

from __future__ import annotations

from typing import Annotated, Any

from ninja import Field, Schema
from pydantic import AfterValidator


class ErrorOut(Schema):
    detail: str = Field(..., description="What is wrong, and what to do about it")


class InvalidOut(Schema):
    """422: a request that does not fit the schema lists each problem; a value the schema allows but the
    app does not (an unknown status, access group or filter) is explained in a sentence."""

    detail: str | list[dict[str, Any]]


# Every operation needs credentials (401), may need a role (403) and validates its input (422); any of them
# answers 503 (with Retry-After) while the database is unreachable (kb/unavailable.py).
COMMON = {401: ErrorOut, 403: ErrorOut, 422: InvalidOut, 503: ErrorOut}


def responses(ok: dict[int, Any], *errors: int) -> dict[int, Any]:
    """The success responses `ok`, the common errors and the operation's own `errors` (as ErrorOut)."""
    return {**ok, **COMMON, **{status: ErrorOut for status in errors}}


def _without_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refused here (422, as Django's forms do) rather than failing on save.
    if "\x00" in value:
        raise ValueError("Null characters are not allowed")
    return value


# Text a client sends that may be stored or searched for.
Text = Annotated[str, AfterValidator(_without_nul), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})]
