"""Stage 7, generate: the versioned prompt with numbered passages goes down the model chain (providers in order,
each with timeouts, bounded retries and a breaker; the extractive answer last). Text streams through a screen
(personal data the passages did not contain is masked, a leaking system prompt is cut off); a link that fails
mid-answer is replaced (a `reset` event); a factual answer that cites nothing gets one more chance.

`generate` is an async generator: it yields the stream's events (dicts) and, last, the draft `Ending` of an
answer for the output guard, or the `Stop` of a chain that gave no answer or a model that said "not covered".
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from kb import metrics
from kb.answers import citations as citation_parser
from kb.answers.models import Outcome
from kb.answers.pipeline.evidence import nearest_documents, says_not_covered
from kb.answers.pipeline.types import Begun, Ending, Evidence, Stop, Trace
from kb.guard.stream import StreamScreen
from kb.llm.chain import ChainDone, Delta, Discard, LinkStart, run_chain
from kb.llm.providers import EXTRACTIVE, ModelRequest, Provider, provider_for

REGENERATE_REMINDER = (
    "\n\nYour previous answer cited no passage. Answer again: after every sentence that states a fact, cite "
    "the passages it comes from as [n]; if the passages do not answer the question, say so as instructed."
)
NO_MODEL_ANSWER = "No model could answer just now, and the documents gave nothing to quote. Try again in a minute."
MISCONFIGURED = (
    "The language model is misconfigured (operators have been alerted): this answer quotes the documents directly."
)


def fallback_notice(link: str) -> str:
    if link == EXTRACTIVE:
        return "The language models are unavailable just now: this answer quotes the documents directly."
    return f"The primary model is unavailable just now: {link} is answering."


def _first_token(trace: Trace) -> None:
    if "first_token_ms" not in trace.latency:
        trace.latency["first_token_ms"] = trace.elapsed_ms()
        metrics.ASK_FIRST_TOKEN.observe(trace.latency["first_token_ms"] / 1000)


async def _screened(
    links: list[Provider], request: ModelRequest, screen: StreamScreen, trace: Trace
) -> AsyncIterator[dict | ChainDone]:
    """One run of the chain as stream events, through the screen; the `ChainDone` is passed on as it is."""
    first_link = links[0].link
    async for event in run_chain(links, request):
        if isinstance(event, Delta):
            shown = screen.feed(event.text)
            if shown:
                _first_token(trace)
                yield {"type": "delta", "text": shown}
        elif isinstance(event, Discard):
            screen.reset()
            trace.latency.pop("first_token_ms", None)
            trace.notices.append(event.notice)
            yield {"type": "reset", "notice": event.notice}
        elif isinstance(event, LinkStart) and event.link != first_link:
            notice = fallback_notice(event.link)
            trace.notices.append(notice)
            yield {"type": "notice", "text": notice}
        elif isinstance(event, ChainDone):
            yield event
    tail = screen.flush()
    if tail:
        _first_token(trace)
        yield {"type": "delta", "text": tail}


def _needs_regeneration(evidence: Evidence, done: ChainDone) -> bool:
    if done.link in (None, EXTRACTIVE):
        return False
    parsed = citation_parser.parse(done.text, set(evidence.sources))
    return not parsed.cited and not says_not_covered(done.text) and bool(done.text.strip())


def drafted(evidence: Evidence, done: ChainDone, trace: Trace) -> Ending | Stop:
    """The chain's answer with its citations; a model's "not covered" is a refusal."""
    parsed = citation_parser.parse(done.text, set(evidence.sources))
    answer = parsed.answer.strip()
    if parsed.invalid:
        trace.notices.append(
            f"Removed {len(parsed.invalid)} citation marker(s) that named no passage given to the model."
        )
    ending = Ending(
        outcome=Outcome.ANSWERED,
        answer=answer,
        invalid=parsed.invalid,
        citations=citation_parser.citations(answer, parsed.cited, evidence.sources),
        model=done.link or "",
        fallback_used=done.fallback_used,
        attempts=[a.as_dict() for a in done.attempts],
        usage=done.usage,
        cost_usd=done.cost_usd,
    )
    if says_not_covered(answer):
        nearest = nearest_documents(evidence.retrieved.result)
        # The extractive answerer found no sentence, step or row that answers (kb/llm/extractive.py).
        reason = "no_answering_passage" if done.link == EXTRACTIVE else "not_covered_by_model"
        refusal = dataclasses.replace(
            ending, outcome=Outcome.REFUSED, refused=True, refusal_reason=reason, citations=[], nearest=nearest,
        )  # fmt: skip
        return Stop(refusal, retrieved=evidence.retrieved, evidence_score=evidence.evidence_score)
    return ending


async def generate(begun: Begun, evidence: Evidence) -> AsyncIterator[dict | Ending | Stop]:
    trace = begun.trace
    trace.latency["overhead_ms"] = trace.elapsed_ms()
    metrics.ASK_OVERHEAD.observe(trace.latency["overhead_ms"] / 1000)
    links = [provider_for(link) for link in (begun.route.chain if begun.route else begun.scope.chain)]
    screen = StreamScreen(
        system_prompt=evidence.model_request.system,
        allowed_text=" ".join(source.text for source in evidence.sources.values()),
    )
    request = evidence.model_request
    earlier: list = []
    for round_number in (1, 2):
        done: ChainDone | None = None
        async for event in _screened(links, request, screen, trace):
            if isinstance(event, ChainDone):
                done = event
            else:
                yield event
        assert done is not None  # run_chain always ends with one
        if round_number == 1 and _needs_regeneration(evidence, done):
            # A factual answer with no citation gets one more chance (guard "citations").
            notice = "The answer cited no source: the model was asked again for a cited answer."
            trace.notices.append(notice)
            screen.reset()
            yield {"type": "reset", "notice": notice}
            earlier = list(done.attempts)
            request = dataclasses.replace(request, user=request.user + REGENERATE_REMINDER)
            continue
        break
    assert done is not None
    done.attempts = earlier + done.attempts
    if done.config_error:
        if done.link == EXTRACTIVE:  # says why the documents are quoted: the generic "unavailable" goes
            trace.notices[:] = [notice for notice in trace.notices if notice != fallback_notice(EXTRACTIVE)]
        trace.notices.append(MISCONFIGURED)
    if done.link is None:
        failed = Ending(
            outcome=Outcome.FAILED,
            answer=NO_MODEL_ANSWER,
            attempts=[a.as_dict() for a in done.attempts],
            error="; ".join(done.fallback_reasons),
        )
        yield Stop(failed, retrieved=evidence.retrieved, evidence_score=evidence.evidence_score)
        return
    yield drafted(evidence, done, trace)
