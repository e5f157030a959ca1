"""The ask pipeline (GUIDE §3): question -> caches -> retrieval -> evidence gate -> prompt -> model chain ->
citations -> one exchange record, whatever happened.

`ask_stream` is an async generator of events for server-sent events; `ask` runs it to the end for JSON
callers and the `ask` command. Database work runs in sync phases (`_begin`, `_finish`) through
`sync_to_async`; at most KB_ASK_DB_CONCURRENCY of them run at once in a process, and none holds a database
connection while a model is writing, so hundreds of answers can stream from one process.

Events: {"type": "start", exchange_id, conversation_id}, {"type": "delta", text}, {"type": "reset", notice}
(drop the text streamed so far: a failed link's partial answer), {"type": "notice", text}, and last
{"type": "done", result} with the answer in the contract's shape (GUIDE §5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ingest.models import Chunk, Document
from kb import metrics
from kb.accounts.roles import Role, has_role
from kb.answers import citations as citation_parser
from kb.answers import followup, gate
from kb.answers.models import Conversation, Exchange, Feedback, Outcome
from kb.audit.services import exchange_audit
from kb.guard import output as output_guard
from kb.guard import pii
from kb.guard.base import Action, GuardError, input_guards, output_guards
from kb.guard.input import BLOCKED_ANSWER, InputContext
from kb.guard.stream import StreamScreen
from kb.llm import cache, prompts
from kb.llm.chain import ChainDone, Delta, Discard, LinkStart, run_chain
from kb.llm.cost import budget_links
from kb.llm.providers import EXTRACTIVE, ModelRequest, Passage, Usage, provider_for
from kb.search import embeddings
from kb.search.models import IndexState
from kb.search.retrieval import ReadScope, SearchResult, search_in_scope, text_clean
from kb.unavailable import RETRY_AFTER_S, is_database_unavailable, unavailability

logger = logging.getLogger(__name__)

NOT_COVERED = "The knowledge base does not cover this question."
NEAREST_DOCUMENTS = 3
HISTORY_ANSWER_CHARS = 600  # of each earlier answer given to the model with a follow-up


def says_not_covered(answer: str) -> bool:
    """The prompt's fixed reply when the passages do not answer the question."""
    return " ".join(answer.split()).casefold().startswith(NOT_COVERED.casefold().rstrip("."))


class AskError(Exception):
    """A question that cannot be asked as given; the message says what to do."""

    def __init__(self, message: str, status: int = 400, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


# --- checks a view makes before it starts a stream ----------------------------------------------------------


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
    context = InputContext(user=user, text=question.strip())
    for guard in input_guards():
        if getattr(guard, "before_record", False):
            try:
                guard.scan(context)
            except GuardError as error:
                raise AskError(str(error), status=error.status, retry_after_s=error.retry_after_s) from None
    if conversation_id is not None and not Conversation.objects.filter(pk=conversation_id, user=user).exists():
        raise AskError("No such conversation: start a new one.", status=404)
    return cleaned


# --- the pipeline ------------------------------------------------------------------------------------------


@dataclass
class Begun:
    exchange_id: int
    conversation_id: int
    question: str
    started: float
    chain: list[str]
    prompt_version: str
    index_version: int
    namespace: str
    use_cache: bool
    notices: list[str] = field(default_factory=list)
    vector: np.ndarray | None = None
    placeholders: dict[str, str] = field(default_factory=dict)  # masked PII, restored for the asker only
    verdicts: list[dict] = field(default_factory=list)
    blocked: dict | None = None  # the input verdict that blocked the question
    hit: cache.Hit | None = None
    similarity: float | None = None
    result: SearchResult | None = None
    sources: dict[int, citation_parser.Source] = field(default_factory=dict)
    request: ModelRequest | None = None
    evidence: float | None = None
    latency: dict[str, float] = field(default_factory=dict)


def _phase(function):
    """Run a sync database phase: in the caller's thread for sync callers, a per-request thread under ASGI.
    Outside a transaction (a request, not a test) the connection is closed at the end, so that a stream
    waiting on a model holds none."""

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return sync_to_async(run, thread_sensitive=True)


_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _db_limit() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    limit = _limits.get(loop)
    if limit is None:
        limit = _limits[loop] = asyncio.Semaphore(settings.KB_ASK_DB_CONCURRENCY)
    return limit


async def _run_phase(function, *args, **kwargs):
    async with _db_limit():
        return await _phase(function)(*args, **kwargs)


async def _record(begun: Begun, done: Ending, latency: dict[str, float]) -> dict:
    """Finish the exchange's record, waiting out a database that is briefly away (a restart, a failover):
    the answer has been written and must not be lost from the record. Gives up after KB_RECORD_RETRY_S."""
    deadline = time.monotonic() + settings.KB_RECORD_RETRY_S
    pause = 0.5
    while True:
        try:
            return await _run_phase(_finish, begun, done, latency)
        except Exception as exc:
            if not is_database_unavailable(exc) or time.monotonic() + pause > deadline:
                raise
            logger.warning("exchange %s not recorded yet, the database is unavailable: retrying", begun.exchange_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def _history(conversation_id: int) -> list[Exchange]:
    if not settings.KB_CONVERSATION_TURNS:
        return []
    turns = (
        Exchange.objects.filter(conversation_id=conversation_id, outcome__in=[Outcome.ANSWERED, Outcome.CACHED])
        .order_by("-created_at")
        .only("question", "answer", "search_query")[: settings.KB_CONVERSATION_TURNS]
    )
    return list(reversed(turns))


_global_spent: tuple[float, float] = (0.0, 0.0)  # (monotonic time read, USD)
GLOBAL_SPENT_TTL_S = 5.0  # summing the whole day's spending once per question would cost more than it tells


def _global_spent_today() -> float:
    global _global_spent
    if not settings.KB_DAILY_BUDGET_USD:
        return 0.0
    read_at, value = _global_spent
    if time.monotonic() - read_at > GLOBAL_SPENT_TTL_S:
        value = Exchange.objects.today().spent_usd()
        _global_spent = (time.monotonic(), value)
    return value


def _begin(user, question: str, conversation_id: int | None, request_id: str) -> Begun:
    started = time.perf_counter()
    scope = ReadScope.for_user(user)
    state = IndexState.objects.filter(pk=1).only("version").first()
    index_version = state.version if state else 0
    prompt = prompts.get(settings.KB_PROMPT_VERSION)
    decision = budget_links(
        list(settings.KB_MODELS),
        user_spent=Exchange.objects.today().of_user(user).spent_usd() if settings.KB_USER_DAILY_BUDGET_USD else 0.0,
        global_spent=_global_spent_today(),
    )
    guarded = InputContext(user=user, text=question)
    t0 = time.perf_counter()
    verdicts = []
    blocked = None
    for guard in input_guards():
        if getattr(guard, "before_record", False):
            continue  # checked before the exchange (ask_check)
        verdict = guard.scan(guarded)
        verdicts.append(verdict.as_dict())
        if verdict.blocked:
            blocked = verdict.as_dict()
            break
    guards_ms = _ms(t0)
    question = guarded.text  # masked from here on: stored, embedded and sent in this form
    with transaction.atomic():
        if conversation_id is None:
            conversation = Conversation.objects.create(user=user, title=question[:200])
        else:
            conversation = Conversation.objects.get(pk=conversation_id, user=user)
            conversation.save(update_fields=["updated_at"])
        history = _history(conversation.pk)
        exchange = Exchange.objects.create(
            user=user,
            conversation=conversation,
            request_id=request_id[:64],
            question=question,
            chain=decision.links,
            prompt_version=prompt.version,
            guard_verdicts=verdicts,
        )
    begun = Begun(
        exchange_id=exchange.pk,
        conversation_id=conversation.pk,
        question=question,
        started=started,
        chain=decision.links,
        prompt_version=prompt.version,
        index_version=index_version,
        namespace=cache.namespace(
            scope_key=scope.key, index_version=index_version, prompt_version=prompt.version, chain=decision.links
        ),
        # A follow-up's meaning depends on its conversation: only standalone questions use the caches.
        use_cache=not history,
    )
    if decision.notice:
        begun.notices.append(decision.notice)
    begun.placeholders = guarded.placeholders
    begun.verdicts = verdicts
    begun.blocked = blocked
    begun.latency["guards_ms"] = guards_ms
    begun.latency["begin_ms"] = _ms(started)
    if blocked is not None:
        return begun

    t0 = time.perf_counter()
    if begun.use_cache:
        begun.hit = cache.lookup_exact(begun.namespace, question)
        if begun.hit is not None:
            begun.latency["cache_ms"] = _ms(t0)
            return begun
    # Normalised (case, spacing, closing punctuation), which the semantic cache was calibrated with and
    # which changes nothing for retrieval; a follow-up is rewritten into a standalone query.
    if history:
        previous = history[-1].search_query or history[-1].question
        search_query = followup.standalone_query(question, previous)
    else:
        search_query = cache.normalise(question)
    t1 = time.perf_counter()
    if not history and guarded.vector is not None:
        begun.vector = guarded.vector  # the injection guard embedded this very text
    else:
        begun.vector = embeddings.embed([search_query])[0]
    begun.latency["embed_ms"] = _ms(t1)
    if begun.use_cache:
        begun.hit, begun.similarity = cache.lookup_semantic(begun.namespace, question, begun.vector)
        begun.latency["cache_ms"] = round(_ms(t0) - begun.latency["embed_ms"], 1)
        if begun.hit is not None:
            return begun
    t1 = time.perf_counter()
    result = search_in_scope(search_query, scope, settings.KB_ANSWER_PASSAGES, query_vector=begun.vector)
    begun.latency["retrieval_ms"] = _ms(t1)
    begun.result = result
    begun.evidence = gate.evidence_score(result)
    if not gate.is_covered(begun.evidence):
        return begun
    begun.sources = {
        n: citation_parser.Source(
            n=n,
            chunk_id=hit.chunk_id,
            document_id=hit.document_id,
            title=hit.title,
            heading=hit.heading,
            page=hit.pages,
            text=hit.text,
        )
        for n, hit in enumerate(result.hits, 1)
    }
    untrusted = set(
        Chunk.objects.filter(pk__in=[hit.chunk_id for hit in result.hits], untrusted=True).values_list("pk", flat=True)
    )
    passages = [
        Passage(n=s.n, title=s.title, heading=s.heading, page=s.page, text=s.text, untrusted=s.chunk_id in untrusted)
        for s in begun.sources.values()
    ]
    begun.request = ModelRequest(
        system=prompt.system,
        user=prompt.user_message(
            passages=render_passages(passages), question=_quoted(question), history=render_history(history)
        ),
        question=question,
        passages=passages,
        max_tokens=settings.KB_LLM_MAX_TOKENS,
    )
    return begun


def _quoted(text: str) -> str:
    # The question and passages sit inside XML-like delimiters: text must not be able to close them.
    return text.replace("<", "‹").replace(">", "›")


def render_passages(passages: list[Passage]) -> str:
    blocks = []
    for p in passages:
        attributes = f'n="{p.n}" document="{_attribute(p.title)}"'
        if p.heading:
            attributes += f' section="{_attribute(p.heading)}"'
        if p.page:
            attributes += f' page="{_attribute(p.page)}"'
        if p.untrusted:
            attributes += ' untrusted="true"'
        blocks.append(f"<passage {attributes}>\n{_quoted(p.text)}\n</passage>")
    return "\n".join(blocks)


def _attribute(value: str) -> str:
    return _quoted(value).replace('"', "'")


def render_history(history: list[Exchange]) -> str:
    if not history:
        return ""
    turns = []
    for turn in history:
        answer = turn.answer if len(turn.answer) <= HISTORY_ANSWER_CHARS else turn.answer[:HISTORY_ANSWER_CHARS] + "…"
        turns.append(
            f"<turn>\n<asked>{_quoted(turn.question)}</asked>\n<answered>{_quoted(answer)}</answered>\n</turn>"
        )
    return "<conversation_so_far>\n" + "\n".join(turns) + "\n</conversation_so_far>\n\n"


def _passages_record(result: SearchResult | None) -> list[dict]:
    if result is None:
        return []
    versions = dict(
        Document.objects.filter(pk__in={hit.document_id for hit in result.hits}).values_list("pk", "version")
    )
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
        }
        for n, hit in enumerate(result.hits, 1)
    ]


def nearest_documents(result: SearchResult | None) -> list[dict]:
    seen: dict[int, dict] = {}
    for hit in result.hits if result else []:
        if hit.document_id not in seen:
            seen[hit.document_id] = {"document_id": hit.document_id, "title": hit.title}
        if len(seen) >= NEAREST_DOCUMENTS:
            break
    return list(seen.values())


@dataclass
class Ending:
    """What `_finish` records."""

    outcome: str
    answer: str = ""
    citations: list[dict] = field(default_factory=list)
    refused: bool = False
    refusal_reason: str = ""
    model: str = ""
    fallback_used: bool = False
    attempts: list[dict] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cached: bool = False
    error: str = ""
    nearest: list[dict] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)  # citation markers that named no given passage
    grounding: list[dict] = field(default_factory=list)


@transaction.atomic  # the completed exchange and its audit event are written together
def _finish(begun: Begun, done: Ending, latency: dict[str, float]) -> dict:
    total_ms = _ms(begun.started)
    latency = {**begun.latency, **latency, "total_ms": total_ms}
    cache_record: dict = {"kind": "skipped" if not begun.use_cache else "miss"}
    if begun.hit is not None:
        cache_record = {
            "kind": begun.hit.kind,
            "similarity": round(begun.hit.similarity, 4),
            "entry": begun.hit.entry_id,
        }
    elif begun.similarity is not None:
        cache_record["nearest_similarity"] = round(begun.similarity, 4)
    usage = {**done.usage.as_dict(), "cost_usd": done.cost_usd}
    result = {
        "answer": done.answer,
        "citations": done.citations,
        "refused": done.refused,
        "refusal_reason": done.refusal_reason,
        "model": done.model,
        "cached": done.cached,
        "fallback_used": done.fallback_used,
        "exchange_id": begun.exchange_id,
        "conversation_id": begun.conversation_id,
        "latency_ms": total_ms,
        "usage": usage,
        "outcome": done.outcome,
        "prompt_version": begun.prompt_version,
        "notices": begun.notices,
        "nearest_documents": done.nearest,
        "cache": cache_record,
        "guards": begun.verdicts,
        "grounding": done.grounding,
    }
    # Only a pending exchange is finished: a retry after a commit whose acknowledgement was lost (see _record)
    # finds it done and must not write a second audit event or cache entry.
    finished = Exchange.objects.filter(pk=begun.exchange_id, outcome=Outcome.PENDING).update(
        outcome=done.outcome,
        answer=done.answer,
        citations=done.citations,
        refused=done.refused,
        refusal_reason=done.refusal_reason,
        model=done.model,
        fallback_used=done.fallback_used,
        attempts=done.attempts,
        notices=begun.notices,
        cache=cache_record,
        passages=_passages_record(begun.result),
        search_query=begun.result.query if begun.result else "",
        evidence_score=begun.evidence,
        guard_verdicts=begun.verdicts,
        grounding=done.grounding,
        usage=usage,
        cost_usd=done.cost_usd,
        latency=latency,
        latency_ms=total_ms,
        error=done.error,
        finished_at=timezone.now(),
    )
    if not finished:
        return result
    exchange_audit(exchange=Exchange.objects.select_related("user").get(pk=begun.exchange_id))
    if (
        begun.use_cache
        and done.outcome == Outcome.ANSWERED
        and not done.refused
        and not done.fallback_used
        and begun.vector is not None
    ):
        cache.store(
            begun.namespace,
            question=begun.question,
            vector=begun.vector,
            index_version=begun.index_version,
            result={k: result[k] for k in CACHEABLE},
            exchange_id=begun.exchange_id,
        )
    metrics.ASK_OUTCOMES.labels(done.outcome).inc()
    return result


# What a cache entry keeps of a result; the rest belongs to the exchange that answers from it.
CACHEABLE = ("answer", "citations", "refused", "refusal_reason", "model", "fallback_used", "prompt_version")


def _answered(begun: Begun, chain_done: ChainDone) -> Ending:
    parsed = citation_parser.parse(chain_done.text, set(begun.sources))
    answer = parsed.answer.strip()
    done = Ending(
        outcome=Outcome.ANSWERED,
        answer=answer,
        invalid=parsed.invalid,
        citations=citation_parser.citations(answer, parsed.cited, begun.sources),
        model=chain_done.link or "",
        fallback_used=chain_done.fallback_used,
        attempts=[a.as_dict() for a in chain_done.attempts],
        usage=chain_done.usage,
        cost_usd=chain_done.cost_usd,
    )
    if parsed.invalid:
        begun.notices.append(
            f"Removed {len(parsed.invalid)} citation marker(s) that named no passage given to the model."
        )
    if says_not_covered(answer):
        done.refused = True
        done.refusal_reason = "not_covered_by_model"
        done.outcome = Outcome.REFUSED
        done.citations = []
        done.nearest = nearest_documents(begun.result)
    return done


async def ask_stream(
    question: str, user, *, conversation_id: int | None = None, request_id: str = ""
) -> AsyncIterator[dict]:
    """The answer as events; the caller has run `ask_check` (the question is clean and the user may ask).
    Without a database nothing can be checked or recorded: a single `error` event says so."""
    try:
        begun: Begun = await _run_phase(_begin, user, question, conversation_id, request_id)
    except Exception as exc:
        message = unavailability(exc)
        if message is None:
            raise
        logger.warning("ask not started, the database is unavailable: %s", type(exc).__name__)
        yield {"type": "error", "status": 503, "retry_after_s": RETRY_AFTER_S, "message": message}
        return
    yield {"type": "start", "exchange_id": begun.exchange_id, "conversation_id": begun.conversation_id}
    for notice in begun.notices:
        yield {"type": "notice", "text": notice}
    done: Ending | None = None
    latency: dict[str, float] = {}
    try:
        if begun.hit is not None:
            done = Ending(outcome=Outcome.CACHED, cached=True, **_from_cache(begun.hit.result))
            if begun.hit.kind == "semantic":
                begun.notices.append(
                    f"Answered from the cache: an earlier question very like yours ({begun.hit.question!r})."
                )
            yield {"type": "delta", "text": done.answer}
        elif begun.blocked is not None:
            done = Ending(
                outcome=Outcome.BLOCKED,
                answer=BLOCKED_ANSWER.format(reason=begun.blocked["reason"]),
                refused=True,
                refusal_reason=f"blocked_{begun.blocked['guard']}",
            )
            yield {"type": "delta", "text": done.answer}
        elif begun.request is None:
            reason = "no_passages" if not (begun.result and begun.result.hits) else "weak_evidence"
            done = Ending(
                outcome=Outcome.REFUSED,
                answer=NOT_COVERED
                + (
                    " No document you can read matches it."
                    if reason == "no_passages"
                    else " The closest documents are listed below; try other words or ask the knowledge team."
                ),
                refused=True,
                refusal_reason=reason,
                nearest=nearest_documents(begun.result),
            )
            yield {"type": "delta", "text": done.answer}
        else:
            overhead = _ms(begun.started)
            latency["overhead_ms"] = overhead
            metrics.ASK_OVERHEAD.observe(overhead / 1000)
            links = [provider_for(link) for link in begun.chain]
            first_link = begun.chain[0]
            screen = StreamScreen(
                system_prompt=begun.request.system,
                allowed_text=" ".join(source.text for source in begun.sources.values()),
            )
            request = begun.request
            chain_done: ChainDone | None = None
            earlier_attempts: list = []
            for round_number in (1, 2):
                async for event in run_chain(links, request):
                    if isinstance(event, Delta):
                        shown = screen.feed(event.text)
                        if shown:
                            _first_token(latency, begun)
                            yield {"type": "delta", "text": shown}
                    elif isinstance(event, Discard):
                        screen.reset()
                        latency.pop("first_token_ms", None)
                        begun.notices.append(event.notice)
                        yield {"type": "reset", "notice": event.notice}
                    elif isinstance(event, LinkStart) and event.link != first_link:
                        notice = fallback_notice(event.link)
                        begun.notices.append(notice)
                        yield {"type": "notice", "text": notice}
                    elif isinstance(event, ChainDone):
                        chain_done = event
                tail = screen.flush()
                if tail:
                    _first_token(latency, begun)
                    yield {"type": "delta", "text": tail}
                if round_number == 1 and _needs_regeneration(begun, chain_done):
                    # A factual answer with no citation gets one more chance (guard "citations").
                    notice = "The answer cited no source: the model was asked again for a cited answer."
                    begun.notices.append(notice)
                    screen.reset()
                    yield {"type": "reset", "notice": notice}
                    earlier_attempts = list(chain_done.attempts) if chain_done else []
                    request = dataclasses.replace(begun.request, user=begun.request.user + REGENERATE_REMINDER)
                    continue
                break
            if chain_done is not None and earlier_attempts:
                chain_done.attempts = earlier_attempts + chain_done.attempts
            assert chain_done is not None
            if chain_done.link is None:
                done = Ending(
                    outcome=Outcome.FAILED,
                    answer="No model could answer just now, and the documents gave nothing to quote. Try again "
                    "in a minute.",
                    attempts=[a.as_dict() for a in chain_done.attempts],
                    error="; ".join(chain_done.fallback_reasons),
                )
            else:
                done = _answered(begun, chain_done)
                done = await _run_phase(_guard_output, begun, done, user)
            if chain_done.config_error:
                begun.notices.append(
                    "The language model is misconfigured (operators have been alerted): this answer quotes the "
                    "documents directly."
                )
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away: record what there was, then let the cancellation go on.
        await asyncio.shield(_record(begun, Ending(outcome=Outcome.CANCELLED), latency))
        raise
    except Exception as exc:
        logger.exception("ask %s failed", begun.exchange_id)
        failed = Ending(outcome=Outcome.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        failed.answer = "Something went wrong while answering; it has been logged. Try again."
        result = await _record(begun, failed, latency)
        yield {"type": "done", "result": result}
        return
    result = await _record(begun, done, latency)
    # The asker may see the personal data they typed; the record and the cache keep the masked form.
    result["answer"] = pii.restore(result["answer"], begun.placeholders)
    yield {"type": "done", "result": result}


REGENERATE_REMINDER = (
    "\n\nYour previous answer cited no passage. Answer again: after every sentence that states a fact, cite "
    "the passages it comes from as [n]; if the passages do not answer the question, say so as instructed."
)


def _needs_regeneration(begun: Begun, chain_done: ChainDone | None) -> bool:
    if chain_done is None or chain_done.link in (None, EXTRACTIVE):
        return False
    parsed = citation_parser.parse(chain_done.text, set(begun.sources))
    return not parsed.cited and not says_not_covered(chain_done.text) and bool(chain_done.text.strip())


def _guard_output(begun: Begun, done: Ending, user) -> Ending:
    """Run the output guards over a model's answer: a block replaces it; masks and flags change it."""
    if done.outcome != Outcome.ANSWERED or begun.request is None:
        return done
    context = output_guard.OutputContext(
        answer=done.answer,
        question=begun.question,
        user=user,
        sources={
            n: output_guard.Source(n, source.chunk_id, source.document_id, source.text)
            for n, source in begun.sources.items()
        },
        system_prompt=begun.request.system,
        cited=[citation["n"] for citation in done.citations],
        invalid=done.invalid,
        refused=done.refused,
        model=done.model,
        placeholders=begun.placeholders,
    )
    started = time.perf_counter()
    for guard in output_guards():
        verdict = guard.scan(context)
        begun.verdicts.append(verdict.as_dict())
        if verdict.action == Action.BLOCK:
            done.outcome = Outcome.BLOCKED
            done.answer = output_guard.BLOCKED_OUTPUT.format(reason=verdict.reason)
            done.citations = []
            done.refused = True
            done.refusal_reason = f"blocked_{verdict.guard}"
            begun.latency["output_guards_ms"] = _ms(started)
            return done
        if verdict.action == Action.FLAG and verdict.guard == "citations":
            begun.notices.append("This answer cites no source: treat it with care.")
    begun.latency["output_guards_ms"] = _ms(started)
    parsed = citation_parser.parse(context.answer, set(begun.sources))
    done.answer = parsed.answer.strip()
    done.citations = citation_parser.citations(done.answer, parsed.cited, begun.sources)
    done.grounding = context.grounding
    unsupported = sum(1 for item in context.grounding if not item["supported"])
    if unsupported:
        begun.notices.append(
            f"{unsupported} sentence(s) are not supported by the passages they cite and are marked [unsupported]."
        )
    return done


def _first_token(latency: dict[str, float], begun: Begun) -> None:
    if "first_token_ms" not in latency:
        latency["first_token_ms"] = _ms(begun.started)
        metrics.ASK_FIRST_TOKEN.observe(latency["first_token_ms"] / 1000)


def fallback_notice(link: str) -> str:
    if link == EXTRACTIVE:
        return "The language models are unavailable just now: this answer quotes the documents directly."
    return f"The primary model is unavailable just now: {link} is answering."


def _from_cache(stored: dict) -> dict:
    return {
        "answer": stored.get("answer", ""),
        "citations": stored.get("citations", []),
        "refused": stored.get("refused", False),
        "refusal_reason": stored.get("refusal_reason", ""),
        "model": stored.get("model", ""),
        "fallback_used": stored.get("fallback_used", False),
    }


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
    with transaction.atomic():
        feedback, _ = Feedback.objects.update_or_create(
            exchange=exchange,
            defaults={"user": user, "rating": rating, "reason": reason if rating == Feedback.Rating.DOWN else "",
                      "comment": comment},
        )  # fmt: skip
        _audit_feedback(feedback)
    return feedback


FEEDBACK_COMMENT_MAX_CHARS = 2000


def _audit_feedback(feedback: Feedback) -> None:
    try:
        from kb.audit.services import audit_record
    except ImportError:  # the audit log lands separately (issue #7)
        return
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
