"""The ask path's entry points (GUIDE §3): `ask_check` before a stream starts, `ask_stream` (events for
server-sent events), `ask` / `ask_collect` (the whole answer for JSON callers and the `ask` command), and the
exchange sweeps and feedback. The stages themselves are in `kb/answers/pipeline/`.

Events: {"type": "start", exchange_id, conversation_id}, {"type": "delta", text}, {"type": "reset", notice}
(drop the text streamed so far: a failed link's partial answer), {"type": "notice", text}, and last
{"type": "done", result} with the answer in the contract's shape (GUIDE §5); without a database a single
{"type": "error", status, retry_after_s, message}.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from kb.accounts.roles import Role, has_role
from kb.answers import pipeline
from kb.answers.models import Conversation, Exchange, Feedback, Outcome
from kb.answers.pipeline import record
from kb.answers.pipeline.database import run_phase, run_phase_patiently
from kb.answers.pipeline.evidence import NOT_COVERED, says_not_covered
from kb.answers.pipeline.generate import generate
from kb.answers.pipeline.input_guard import check_before_record
from kb.answers.pipeline.output_guard import output_guard
from kb.answers.pipeline.types import AskRequest, Begun, Ending, Stop
from kb.audit.services import audit_record, exchange_audit
from kb.guard import pii
from kb.guard.base import GuardError
from kb.ops.slo import slo_count_rating
from kb.text import has_lone_surrogates, text_clean
from kb.unavailable import RETRY_AFTER_S, unavailability

logger = logging.getLogger(__name__)

__all__ = ["NOT_COVERED", "AskError", "ask", "ask_check", "ask_collect", "ask_stream", "says_not_covered"]


class AskError(Exception):
    """A question that cannot be asked as given; the message says what to do."""

    def __init__(self, message: str, status: int = 400, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


# --- checks a view makes before it starts a stream ----------------------------------------------------------


INVALID_TEXT = (
    "The {what} contains a broken character (a lone UTF-16 surrogate, which is not text and cannot be stored): "
    "retype it or paste it as plain text."
)


def question_clean(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise AskError("Type a question.")
    # Not cut to the search limit: the length guard measures the question, and retrieval shortens its query.
    cleaned = text_clean(question)
    if not cleaned:
        raise AskError("Type a question.")
    return cleaned


def ask_check(user, question: str, conversation_id: int | None) -> str:
    """The cleaned question; AskError when the user may not ask or the conversation is not theirs."""
    if not has_role(user, Role.EMPLOYEE):
        raise AskError("Asking questions is for the Employee role.", status=403)
    cleaned = question_clean(question)
    if has_lone_surrogates(cleaned):
        # Refused, and on record like every refusal (with the broken characters shown as U+FFFD).
        record.record_rejected(user=user, question=cleaned, reason="invalid_text")
        raise AskError(INVALID_TEXT.format(what="question"))
    try:
        # The length counted is the question's as recorded (spaces and line breaks run together), which is what
        # the ask page's counter counts too.
        check_before_record(user, cleaned)
    except GuardError as error:
        raise AskError(str(error), status=error.status, retry_after_s=error.retry_after_s) from None
    if conversation_id is not None and not Conversation.objects.filter(pk=conversation_id, user=user).exists():
        raise AskError("No such conversation: start a new one.", status=404)
    return cleaned


# --- the answer as events ------------------------------------------------------------------------------------


async def _answer(begun: Begun) -> AsyncIterator[dict | Ending]:
    """Stages 7 and 8 after the database phase: the stream's events, then the `Ending` to record."""
    if isinstance(begun.next, Stop):
        yield {"type": "delta", "text": begun.next.ending.answer}
        yield begun.next.ending
        return
    draft: Ending | Stop | None = None
    async for item in generate(begun, begun.next):
        if isinstance(item, dict):
            yield item
        else:
            draft = item
    if isinstance(draft, Stop):
        yield draft.ending
    elif draft is not None:
        yield await run_phase(output_guard, begun, begun.next, draft)


async def _record(begun: Begun, ending: Ending) -> dict:
    return await run_phase_patiently(record.finish, begun, ending, what=f"exchange {begun.opened.exchange_id}")


async def ask_stream(
    question: str, user, *, conversation_id: int | None = None, request_id: str = ""
) -> AsyncIterator[dict]:
    """The answer as events; the caller has run `ask_check` (the question is clean and the user may ask)."""
    request = AskRequest(user=user, question=question, conversation_id=conversation_id, request_id=request_id)
    try:
        begun: Begun = await run_phase(pipeline.begin, request)
    except GuardError as error:  # a limit met as the exchange was opened (another ask of the user's won)
        yield {"type": "error", "status": error.status, "retry_after_s": error.retry_after_s, "message": str(error)}
        return
    except Exception as exc:
        message = unavailability(exc)
        if message is None:
            raise
        logger.warning("ask not started, the database is unavailable: %s", type(exc).__name__)
        yield {"type": "error", "status": 503, "retry_after_s": RETRY_AFTER_S, "message": message}
        return
    yield {"type": "start", "exchange_id": begun.opened.exchange_id, "conversation_id": begun.opened.conversation_id}
    for notice in list(begun.trace.notices):
        yield {"type": "notice", "text": notice}
    ending: Ending | None = None
    try:
        async for item in _answer(begun):
            if isinstance(item, dict):
                yield item
            else:
                ending = item
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away: record what there was, then let the cancellation go on.
        await asyncio.shield(_record(begun, Ending(outcome=Outcome.CANCELLED)))
        raise
    except Exception as exc:
        logger.exception("ask %s failed", begun.opened.exchange_id)
        failed = Ending(
            outcome=Outcome.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:500],
            answer="Something went wrong while answering; it has been logged. Try again.",
        )
        yield {"type": "done", "result": await _record(begun, failed)}
        return
    assert ending is not None  # _answer always ends with one
    result = await _record(begun, ending)
    # The asker may see the personal data they typed; the record and the cache keep the masked form.
    result["answer"] = pii.restore(result["answer"], dict(begun.guarded.placeholders))
    yield {"type": "done", "result": result}


async def ask_collect(question: str, user, *, conversation_id: int | None = None, request_id: str = "") -> dict:
    result: dict = {}
    async for event in ask_stream(question, user, conversation_id=conversation_id, request_id=request_id):
        if event["type"] == "done":
            result = event["result"]
        elif event["type"] == "error":
            raise AskError(event["message"], status=event["status"], retry_after_s=event["retry_after_s"])
    return result


def ask(question: str, user, *, conversation_id: int | None = None, request_id: str = "") -> dict:
    """Ask and wait for the whole answer (JSON API, command). Raises AskError for a question not askable."""
    cleaned = ask_check(user, question, conversation_id)
    return async_to_sync(ask_collect)(cleaned, user, conversation_id=conversation_id, request_id=request_id)


# --- exchanges nobody finished ---------------------------------------------------------------------------

ABANDONED_ERROR = (
    "interrupted: the web process stopped (or lost its database) before the answer was recorded; "
    "closed by the abandoned-exchange sweep"
)


def exchanges_close_abandoned(*, older_than: timedelta | None = None) -> int:
    """Exchanges still pending long after any answer could have finished - their web process was killed or
    restarted mid-answer, or the database stayed away longer than KB_RECORD_RETRY_S - are recorded as failed,
    each with its audit event, so that every exchange that was started is on record. Beat runs this."""
    age = older_than if older_than is not None else timedelta(seconds=settings.KB_ABANDONED_EXCHANGE_S)
    cutoff = timezone.now() - age
    closed = 0
    stale = Exchange.objects.filter(outcome=Outcome.PENDING, created_at__lt=cutoff).order_by("pk")
    for pk in stale.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            finished = Exchange.objects.filter(pk=pk, outcome=Outcome.PENDING).update(
                outcome=Outcome.FAILED, error=ABANDONED_ERROR, finished_at=timezone.now()
            )
            if finished:  # not finished by its own process in the meantime
                exchange_audit(exchange=Exchange.objects.select_related("user").get(pk=pk))
                closed += 1
    if closed:
        logger.warning("%s abandoned exchanges recorded as failed", closed)
    return closed


# --- feedback ----------------------------------------------------------------------------------------------


def feedback_give(*, exchange: Exchange, user, rating: str, reason: str = "", comment: str = "") -> Feedback:
    """Record (or change) the asker's rating of an answer; only the asker may rate it."""
    if exchange.user_id != user.pk:
        raise AskError("No such answer.", status=404)
    if rating not in Feedback.Rating.values:
        raise AskError(f"Rate an answer {' or '.join(Feedback.Rating.values)}.")
    if reason and reason not in Feedback.Reason.values:
        raise AskError(f"Give one of these reasons: {', '.join(Feedback.Reason.values)}.")
    comment = (comment or "").strip()
    if len(comment) > FEEDBACK_COMMENT_MAX_CHARS:
        raise AskError(f"Keep the comment under {FEEDBACK_COMMENT_MAX_CHARS:,} characters.")
    if has_lone_surrogates(comment):
        raise AskError(INVALID_TEXT.format(what="comment"))
    # Stored, audited and exported: personal data and secrets in it are masked as in a question.
    comment = pii.mask(comment).text
    previous = Feedback.objects.filter(exchange=exchange).values_list("rating", flat=True).first()
    with transaction.atomic():
        feedback, _ = Feedback.objects.update_or_create(
            exchange=exchange,
            defaults={"user": user, "rating": rating, "reason": reason if rating == Feedback.Rating.DOWN else "",
                      "comment": comment},
        )  # fmt: skip
        _audit_feedback(feedback)
    slo_count_rating(exchange=exchange, previous=previous, rating=rating)
    return feedback


FEEDBACK_COMMENT_MAX_CHARS = 2000


def _audit_feedback(feedback: Feedback) -> None:
    audit_record(
        kind="feedback",
        actor=feedback.user,
        data={
            "exchange_id": feedback.exchange_id,
            "rating": feedback.rating,
            "reason": feedback.reason,
            "comment": feedback.comment,
        },
    )
