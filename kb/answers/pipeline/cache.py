"""Stage 3, known answers: the exact cache, then (once the question is embedded) the semantic cache, both in
the scope's namespace; on a miss, the query that retrieval searches for. Follow-ups skip the caches: their
meaning depends on the conversation, so they are rewritten into a standalone query instead."""

from __future__ import annotations

import time

from kb.answers import citations, followup
from kb.answers.models import Outcome
from kb.answers.pipeline.types import Ending, Guarded, Opened, Query, Scope, Stop, Trace, ms_since
from kb.llm import cache
from kb.search import embeddings
from kb.text import normalise

SEMANTIC_HIT_NOTICE = "Answered from the cache: this answer was given to an earlier question with the same meaning."


def _from_cache(hit: cache.Hit) -> Stop:
    stored = hit.result
    # Entries written before answers were numbered for the reader get the same numbering (a no-op for the rest).
    shown = citations.as_shown(stored.get("answer", ""), stored.get("citations", []))
    return Stop(
        Ending(
            outcome=Outcome.CACHED,
            cached=True,
            answer=shown.answer,
            citations=shown.citations,
            refused=stored.get("refused", False),
            refusal_reason=stored.get("refusal_reason", ""),
            model=stored.get("model", ""),
            fallback_used=stored.get("fallback_used", False),
        )
    )


def _hit(hit: cache.Hit, trace: Trace) -> Stop:
    trace.cache = {"kind": hit.kind, "similarity": round(hit.similarity, 4), "entry": hit.entry_id}
    if hit.kind == "semantic":
        # Never the cached question itself: it may be another person's, with what they said in it.
        trace.notices.append(SEMANTIC_HIT_NOTICE)
    return _from_cache(hit)


def known_answer(scope: Scope, guarded: Guarded, opened: Opened, trace: Trace) -> Stop | Query:
    question = guarded.question
    if opened.use_cache:
        trace.cache = {"kind": "miss"}
        with trace.timed("cache_ms"):
            hit = cache.lookup_exact(scope.namespace, question)
        if hit is not None:
            return _hit(hit, trace)
    # Normalised (case, spacing, closing punctuation), which the semantic cache was calibrated with and which
    # changes nothing for retrieval; a follow-up is rewritten into a standalone query.
    if opened.history:
        previous = opened.history[-1].search_query or opened.history[-1].question
        text = followup.standalone_query(question, previous)
    else:
        text = normalise(question)
    with trace.timed("embed_ms"):
        # The injection guard may have embedded this very text already.
        vector = guarded.vector if opened.use_cache and guarded.vector is not None else embeddings.embed([text])[0]
    if opened.use_cache:
        started = time.perf_counter()
        hit, nearest = cache.lookup_semantic(scope.namespace, question, vector)
        trace.latency["cache_ms"] = round(trace.latency["cache_ms"] + ms_since(started), 1)
        if hit is not None:
            return _hit(hit, trace)
        if nearest is not None:
            trace.cache["nearest_similarity"] = round(nearest, 4)
    topic = opened.topic if opened.history and normalise(opened.topic) != normalise(text) else ""
    return Query(text=text, vector=vector, topic=topic)
