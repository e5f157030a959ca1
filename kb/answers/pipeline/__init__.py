"""The ask path as stages, in GUIDE §3 order; one module per stage, each `stage(...) -> result | Stop`:

1. scope.scope              what the asker may read; index and prompt versions; the chain the budget allows
2. input_guard.input_guard  limits, personal data masked, prompt injection (a block is recorded as an answer)
   record.open_exchange     the pending exchange row (so that every exchange that starts is on record)
3. cache.known_answer       exact and semantic caches, else the query to search
4. retrieve.retrieve        hybrid search within the read scope
5. evidence.evidence        the evidence gate, then the numbered passages and the model request
6. route.route              the tier's chain (KB_ROUTES), narrowed by the budget and the residency rule
7. generate.generate        the model chain, streamed through the screen (async)
8. output_guard.output_guard  citations, grounding, leaks
9. record.finish            the exchange row and its audit event, whatever happened

Stages 1-5 run in one synchronous database phase (`begin`, one thread hop); the stream then holds no database
connection while a model writes.
"""

from __future__ import annotations

# The stage modules, not their functions, so that `pipeline.evidence` stays the module of that name.
from kb.answers.pipeline import cache, evidence, input_guard, record, retrieve, route, scope
from kb.answers.pipeline.types import AskRequest, Begun, Evidence, Guarded, Opened, Scope, Stop, Trace


def _until_evidence(scoped: Scope, guarded: Guarded, opened: Opened, trace: Trace) -> Stop | Evidence:
    if guarded.block is not None:
        return guarded.block
    query = cache.known_answer(scoped, guarded, opened, trace)
    if isinstance(query, Stop):
        return query
    return evidence.evidence(scoped, guarded, opened, retrieve.retrieve(scoped, query, trace))


def begin(request: AskRequest) -> Begun:
    """Stages 1-6: everything before a model is called, with the exchange opened on record."""
    trace = Trace(started=request.started)
    scoped = scope.scope(request, trace)
    guarded = input_guard.input_guard(request, trace)
    opened = record.open_exchange(request, scoped, guarded, trace)
    trace.latency["begin_ms"] = trace.elapsed_ms()
    outcome = _until_evidence(scoped, guarded, opened, trace)
    routed = None if isinstance(outcome, Stop) else route.route(scoped, opened, outcome, trace)
    return Begun(request=request, scope=scoped, guarded=guarded, opened=opened, next=outcome, trace=trace, route=routed)
