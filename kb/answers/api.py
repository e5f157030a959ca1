"""POST /api/v1/ask: a cited answer as JSON, or as server-sent events with `stream: true`."""

from __future__ import annotations

import json
import uuid

from asgiref.sync import async_to_sync
from django.db import connection
from django.http import JsonResponse, StreamingHttpResponse
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from kb.accounts.api_auth import for_roles
from kb.accounts.roles import Role
from kb.answers import services
from kb.answers.models import Exchange

router = Router(tags=["answers"])


class AskIn(Schema):
    question: str = Field(..., description="The question, up to KB_QUESTION_MAX_CHARS characters")
    conversation_id: int | None = Field(None, description="Continue this conversation (yours); omit to start one")
    stream: bool = Field(False, description="Answer as server-sent events: start, notice, delta, reset, done")


class CitationOut(Schema):
    n: int
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


class ErrorOut(Schema):
    detail: str


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
    response={200: AskOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut, 429: ErrorOut},
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
    return async_to_sync(services.ask_collect)(
        question, user, conversation_id=payload.conversation_id, request_id=request_id
    )


class FeedbackIn(Schema):
    exchange_id: int
    rating: str = Field(..., description="up or down")
    reason: str = Field("", description="with down: wrong, not_cited, outdated, incomplete or other")
    comment: str = Field("", max_length=2000)


class FeedbackOut(Schema):
    exchange_id: int
    rating: str
    reason: str
    comment: str


@router.post(
    "/feedback",
    response=FeedbackOut,
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
