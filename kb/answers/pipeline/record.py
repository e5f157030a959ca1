"""Stage 9, record: the exchange row is opened (pending) before anything slow happens, and finished with its
one hash-chained audit event, whatever happened - answered, cached, refused, blocked, failed or cancelled."""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingest.models import Document
from kb import metrics
from kb.answers.models import Conversation, Exchange, Outcome
from kb.answers.pipeline.input_guard import check_before_record
from kb.answers.pipeline.retrieve import leg_passages
from kb.answers.pipeline.types import AskRequest, Begun, Ending, Guarded, Opened, Retrieved, Scope, Trace, Turn
from kb.audit.services import exchange_audit
from kb.llm import cache
from kb.ops.services import exchange_recorded
from kb.ops.slo import slo_count_exchange
from kb.text import has_lone_surrogates, normalise

ASK_LOCK = 7301  # advisory lock class of "a user's asks being opened" (the second key is the user's id)

# What a cache entry keeps of a result; the rest belongs to the exchange that answers from it.
CACHEABLE = ("answer", "citations", "refused", "refusal_reason", "model", "fallback_used", "prompt_version")


def _history(conversation_id: int, turns: int) -> tuple[Turn, ...]:
    if not turns:
        return ()
    latest = (
        Exchange.objects.filter(conversation_id=conversation_id, outcome__in=[Outcome.ANSWERED, Outcome.CACHED])
        .order_by("-created_at")
        .only("question", "answer", "search_query")[:turns]
    )
    # A cached answer searched nothing (its search query is empty): its question is what it would have searched
    # for, normalised as a first question is (follow-ups skip the caches).
    return tuple(Turn(e.question, e.answer, e.search_query or normalise(e.question)) for e in reversed(latest))


def _topic(conversation_id: int) -> str:
    """What the conversation's first answered question searched for: the topic its follow-ups most often keep."""
    first = (
        Exchange.objects.filter(conversation_id=conversation_id, outcome__in=[Outcome.ANSWERED, Outcome.CACHED])
        .order_by("created_at")
        .only("question", "search_query")
        .first()
    )
    return (first.search_query or normalise(first.question)) if first else ""


def open_exchange(request: AskRequest, scope: Scope, guarded: Guarded, trace: Trace) -> Opened:
    """The pending exchange (and a new conversation, or the asker's own one touched), in one transaction."""
    question = guarded.question
    with transaction.atomic():
        # Two asks of one user cannot both pass the limits and then both be recorded: they queue on a lock of
        # that user's (milliseconds), and the limits are checked again on what is recorded. Without per-user
        # limits there is nothing to serialise (one round trip less).
        if settings.KB_RATE_LIMIT_PER_MINUTE or settings.KB_USER_ASKS_IN_FLIGHT:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ASK_LOCK, request.user.pk])
        check_before_record(request.user, request.question)
        if request.conversation_id is None:
            conversation = Conversation.objects.create(user=request.user, title=question[:200])
        else:
            conversation = Conversation.objects.get(pk=request.conversation_id, user=request.user)
            conversation.save(update_fields=["updated_at"])
        history = _history(conversation.pk, settings.KB_CONVERSATION_TURNS)
        exchange = Exchange.objects.create(
            user=request.user,
            conversation=conversation,
            request_id=request.request_id[:64],
            question=question,
            chain=list(scope.chain),
            prompt_version=scope.prompt.version,
            configuration_id=scope.configuration.id if scope.configuration else None,
            guard_verdicts=trace.verdicts,
        )
    topic = _topic(conversation.pk) if history else ""
    return Opened(exchange_id=exchange.pk, conversation_id=conversation.pk, history=history, topic=topic)


def _passages_record(retrieved: Retrieved | None) -> list[dict]:
    if retrieved is None:
        return []
    hits = retrieved.hits
    conversation = {hit.chunk_id for hit in retrieved.conversation}
    # The last `leg_passages()` of the search's own passages were placed by the legs, not by fusion (a leg's best
    # passage that fusion ranked lower); their leg ranks say which.
    legs_from = settings.KB_ANSWER_PASSAGES - leg_passages()
    versions = dict(Document.objects.filter(pk__in={hit.document_id for hit in hits}).values_list("pk", "version"))
    return [
        {
            "n": n,
            "chunk_id": hit.chunk_id,
            "document_id": hit.document_id,
            "document_version": versions.get(hit.document_id),
            "vector_rank": hit.vector_rank,
            "bm25_rank": hit.bm25_rank,
            "fused_score": round(hit.fused_score, 6),
            "similarity": None if hit.vector_similarity is None else round(hit.vector_similarity, 4),
            "bm25_score": None if hit.bm25_score is None else round(hit.bm25_score, 4),
            **({"conversation": True} if hit.chunk_id in conversation else {}),
            **({"leg_best": True} if legs_from < n <= len(retrieved.result.hits) else {}),
        }
        for n, hit in enumerate(hits, 1)
    ]


def result_of(begun: Begun, ending: Ending, total_ms: float) -> dict:
    """The answer in the contract's shape (GUIDE §5) and what the page shows beside it."""
    trace = begun.trace
    return {
        "answer": ending.answer,
        "citations": ending.citations,
        "refused": ending.refused,
        "refusal_reason": ending.refusal_reason,
        "model": ending.model,
        "cached": ending.cached,
        "fallback_used": ending.fallback_used,
        "exchange_id": begun.opened.exchange_id,
        "conversation_id": begun.opened.conversation_id,
        "latency_ms": total_ms,
        "usage": {**ending.usage.as_dict(), "cost_usd": ending.cost_usd},
        "outcome": ending.outcome,
        "prompt_version": begun.scope.prompt.version,
        "configuration": begun.scope.configuration.as_record() if begun.scope.configuration else None,
        "notices": trace.notices,
        "nearest_documents": ending.nearest,
        "cache": trace.cache,
        "route": trace.route,
        "guards": trace.verdicts,
        "grounding": ending.grounding,
    }


@transaction.atomic  # the finished exchange and its audit event are written together
def finish(begun: Begun, ending: Ending) -> dict:
    trace = begun.trace
    total_ms = trace.elapsed_ms()
    result = result_of(begun, ending, total_ms)
    retrieved = begun.retrieved
    # Only a pending exchange is finished: a retry after a commit whose acknowledgement was lost finds it done
    # and must not write a second audit event or cache entry.
    finished = Exchange.objects.filter(pk=begun.opened.exchange_id, outcome=Outcome.PENDING).update(
        outcome=ending.outcome,
        answer=ending.answer,
        citations=ending.citations,
        refused=ending.refused,
        refusal_reason=ending.refusal_reason,
        model=ending.model,
        fallback_used=ending.fallback_used,
        attempts=ending.attempts,
        notices=trace.notices,
        cache=trace.cache,
        route=trace.route.get("tier", ""),
        routing=trace.route,
        # The chain the route chose (a tier's, narrowed by budget and residency), not KB_MODELS, once routed.
        **({"chain": trace.route["chain"]} if trace.route.get("chain") else {}),
        passages=_passages_record(retrieved),
        search_query=retrieved.result.query if retrieved else "",
        evidence_score=begun.evidence_score,
        guard_verdicts=trace.verdicts,
        grounding=ending.grounding,
        usage=result["usage"],
        cost_usd=ending.cost_usd,
        latency={**trace.latency, "total_ms": total_ms},
        latency_ms=total_ms,
        error=ending.error,
        finished_at=timezone.now(),
    )
    if not finished:
        return result
    exchange_audit(exchange=Exchange.objects.select_related("user").get(pk=begun.opened.exchange_id))
    answered = ending.outcome == Outcome.ANSWERED and not ending.refused and not ending.fallback_used
    if begun.opened.use_cache and answered and retrieved is not None:
        cache.store(
            begun.scope.namespace,
            question=begun.guarded.question,
            vector=retrieved.query.vector,
            index_version=begun.scope.index_version,
            result={key: result[key] for key in CACHEABLE},
            exchange_id=begun.opened.exchange_id,
        )
    metrics.ASK_OUTCOMES.labels(ending.outcome).inc()
    slo_count_exchange(
        outcome=ending.outcome, refused=ending.refused, fallback_used=ending.fallback_used, attempts=ending.attempts,
        latency=trace.latency, grounding=ending.grounding,
    )  # fmt: skip
    configuration = begun.scope.configuration
    if configuration is not None and configuration.rollout_id is not None:
        # A rollout's candidate is judged on its exchanges as they are recorded (kb/ops: rolled back when worse).
        transaction.on_commit(partial(exchange_recorded, rollout_id=configuration.rollout_id, arm=configuration.arm))
    return result


@transaction.atomic
def record_rejected(*, user, question: str, reason: str) -> int:
    """A question refused before it could be asked (it is not valid text): on record, finished at once, with its
    audit event. Characters that cannot be stored are kept as U+FFFD."""
    storable = "".join("\ufffd" if has_lone_surrogates(character) else character for character in question)
    exchange = Exchange.objects.create(
        user=user,
        question=storable,
        outcome=Outcome.BLOCKED,
        refused=True,
        refusal_reason=reason,
        finished_at=timezone.now(),
    )
    exchange_audit(exchange=Exchange.objects.select_related("user").get(pk=exchange.pk))
    metrics.ASK_OUTCOMES.labels(Outcome.BLOCKED).inc()
    slo_count_exchange(
        outcome=Outcome.BLOCKED, refused=True, fallback_used=False, attempts=[], latency={}, grounding=[]
    )
    return exchange.pk
