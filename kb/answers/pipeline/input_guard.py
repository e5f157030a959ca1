"""Stage 2, input guard: limits that refuse a question before anything is recorded (length, rate), then the
guards that run on every recorded question (personal data masked before it leaves the machine, prompt
injection). A blocking verdict is an answer too: the exchange is recorded with the reason."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from kb.answers.models import Exchange, Outcome
from kb.answers.pipeline.types import AskRequest, Ending, Guarded, Stop, Trace
from kb.guard.base import input_guards
from kb.guard.input import BLOCKED_ANSWER, RATE_WINDOW, InputContext


def recent_asks(user) -> list[datetime]:
    """When the user asked within the rate-limit window, newest first (as many as the limit needs)."""
    limit = settings.KB_RATE_LIMIT_PER_MINUTE
    if not limit:
        return []
    since = timezone.now() - RATE_WINDOW
    return list(
        Exchange.objects.filter(user=user, created_at__gte=since)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:limit]
    )


def asks_in_flight(user) -> int:
    """The user's questions being answered now (pending, younger than an abandoned one)."""
    if not settings.KB_USER_ASKS_IN_FLIGHT:
        return 0
    since = timezone.now() - timedelta(seconds=settings.KB_ABANDONED_EXCHANGE_S)
    return Exchange.objects.filter(user=user, outcome=Outcome.PENDING, created_at__gte=since).count()


def check_before_record(user, question: str) -> None:
    """Run the guards that refuse a request before it is recorded (length, rate, asks in flight); GuardError
    says why. Run once before a stream starts, and again under the user's lock as the exchange is opened."""
    context = InputContext(user=user, text=question, recent_asks=recent_asks(user), in_flight=asks_in_flight(user))
    for guard in input_guards():
        if getattr(guard, "before_record", False):
            guard.scan(context)


def topics_for(guards) -> object:
    """The active off-limits topics' matcher when a configured guard needs it (one small query per ask)."""
    if not any(getattr(guard, "needs_topics", False) for guard in guards):
        return None
    from kb.guard.services import active_matcher

    return active_matcher()


def input_guard(request: AskRequest, trace: Trace) -> Guarded:
    context = InputContext(user=request.user, text=request.question, topics=topics_for(input_guards()))
    block = None
    with trace.timed("guards_ms"):
        for guard in input_guards():
            if getattr(guard, "before_record", False):
                continue  # checked before the exchange (check_before_record)
            verdict = guard.scan(context)
            trace.verdicts.append(verdict.as_dict())
            if verdict.blocked:
                # A guard may give its own answer and reason (an off-limits topic's message, "off_limits").
                answer = verdict.details.get("answer") or getattr(guard, "blocked_answer", BLOCKED_ANSWER).format(
                    reason=verdict.reason
                )
                block = Stop(
                    Ending(
                        outcome=Outcome.BLOCKED,
                        answer=answer,
                        refused=True,
                        refusal_reason=verdict.details.get("refusal_reason") or f"blocked_{verdict.guard}",
                    )
                )
                break
    return Guarded(question=context.text, placeholders=dict(context.placeholders), vector=context.vector, block=block)
