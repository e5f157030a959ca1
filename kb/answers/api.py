"""POST /api/v1/ask: a cited answer as JSON, or as server-sent events with `stream: true`."""

from __future__ import annotations

import json
import uuid
from typing import Literal

from asgiref.sync import async_to_sync
from django.db import connection
from django.http import JsonResponse, StreamingHttpResponse
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from kb.accounts.api_auth import for_roles
from kb.accounts.roles import Role
from kb.answers import services
from kb.answers.models import Exchange, Feedback
from kb.api_common import Text, responses

router = Router(tags=["answers"])


class AskIn(Schema):
    question: str = Field(..., description="The question, up to KB_QUESTION_MAX_CHARS characters")
    conversation_id: int | None = Field(None, description="Continue this conversation (yours); omit to start one")
    stream: bool = Field(
        False, description="Answer as server-sent events: start, notice, delta, reset, done (or a single error)"
    )


class CitationOut(Schema):
    n: int = Field(..., description="The number its [n] markers show: sources are numbered 1, 2, 3 in order of use")
    passage: int | None = Field(
        None, description="The number of the passage as given to the model (the audit's passages are numbered so)"
    )
    document_id: int
    title: str
    heading: str
    page: str
    chunk_id: int
    quote: str


class UsageOut(Schema):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float


class NearestOut(Schema):
    document_id: int
    title: str


class AskOut(Schema):
    answer: str
    citations: list[CitationOut]
    refused: bool
    refusal_reason: str
    model: str
    cached: bool
    fallback_used: bool
    exchange_id: int
    conversation_id: int
    latency_ms: float
    usage: UsageOut
    outcome: str
    prompt_version: str
    notices: list[str]
    nearest_documents: list[NearestOut]
    cache: dict
    guards: list[dict]
    grounding: list[dict]


def _sse_event(kind: str, payload: dict) -> dict:
    """One server-sent event (as OpenAPI 3.1 describes an event stream): its name and its JSON data."""
    data = {"type": "object", "required": list(payload), "properties": payload}
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": kind},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


_TEXT = {"type": "string"}
SSE_EVENT = {
    "description": "start, then notices and deltas (a reset drops the text so far), and last done with the "
    "answer in the JSON response's shape; or, when nothing could be started (the database is unavailable), a "
    "single error event with the status the JSON request would have had",
    "oneOf": [
        _sse_event("start", {"exchange_id": {"type": "integer"}, "conversation_id": {"type": "integer"}}),
        _sse_event("notice", {"text": _TEXT}),
        _sse_event("delta", {"text": _TEXT}),
        _sse_event("reset", {"notice": _TEXT}),
        _sse_event("done", {"result": {"$ref": "#/components/schemas/AskOut"}}),
        _sse_event("error", {"status": {"type": "integer"}, "retry_after_s": {"type": "integer"}, "message": _TEXT}),
    ],
}


def _error_response(error: services.AskError) -> JsonResponse:
    response = JsonResponse({"detail": str(error)}, status=error.status)
    if error.retry_after_s:
        response["Retry-After"] = str(error.retry_after_s)
    return response


def request_id_of(request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given[:64] if given.isprintable() and given else uuid.uuid4().hex


def sse(event: dict) -> bytes:
    kind = event["type"]
    payload = {k: v for k, v in event.items() if k != "type"}
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _events(question: str, user, conversation_id: int | None, request_id: str):
    async for event in services.ask_stream(question, user, conversation_id=conversation_id, request_id=request_id):
        yield sse(event)


@router.post(
    "/ask",
    response=responses({200: AskOut}, 400, 404, 429),
    # With `stream: true` the 200 is a stream of server-sent events instead, each as SSE_EVENT says.
    openapi_extra={"responses": {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}}},
    auth=for_roles(Role.EMPLOYEE),
    summary="Ask a question; every claim in the answer cites a passage, or the answer says it is not covered",
)
def ask(request, payload: AskIn, stream: bool = False):
    user = request.auth
    request_id = request_id_of(request)
    try:
        question = services.ask_check(user, payload.question, payload.conversation_id)
    except services.AskError as error:
        return _error_response(error)
    if payload.stream or stream:
        # The stream mostly waits on a model: give this request's database connection back to the pool now
        # (each phase of the answer takes one only while it runs). A test's transaction keeps its own.
        if not connection.in_atomic_block:
            connection.close()
        response = StreamingHttpResponse(
            _events(question, user, payload.conversation_id, request_id), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies must pass each event on at once
        response["X-Request-ID"] = request_id
        return response
    # Checked above: run the pipeline itself rather than services.ask, which would check it all again.
    try:
        return async_to_sync(services.ask_collect)(
            question, user, conversation_id=payload.conversation_id, request_id=request_id
        )
    except services.AskError as error:  # the database went away before the answer could start
        return _error_response(error)


class FeedbackIn(Schema):
    exchange_id: int
    rating: Feedback.Rating = Field(..., description="up or down")
    reason: Feedback.Reason | Literal[""] = Field("", description="why, with down (ignored with up)")
    comment: Text = Field("", max_length=2000)


class FeedbackOut(Schema):
    exchange_id: int
    rating: str
    reason: str
    comment: str


@router.post(
    "/feedback",
    response=responses({200: FeedbackOut}, 400, 404),
    summary="Rate one of your answers (the latest rating counts)",
    auth=for_roles(Role.EMPLOYEE),
)
def feedback(request, payload: FeedbackIn):
    user = request.auth
    exchange = Exchange.objects.filter(pk=payload.exchange_id, user=user).first()
    if exchange is None:
        raise HttpError(404, "No such answer of yours.")
    try:
        given = services.feedback_give(
            exchange=exchange, user=user, rating=payload.rating, reason=payload.reason, comment=payload.comment
        )
    except services.AskError as error:
        raise HttpError(error.status, str(error)) from None
    return given
