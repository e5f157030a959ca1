"""Stage 4, retrieve: hybrid search (pgvector HNSW and exact BM25, fused by reciprocal rank) of the query
within the asker's read scope; the permission and current-version filters are inside the SQL. The last
KB_ANSWER_LEG_PASSAGES passages are each leg's best passage not among fusion's first ones (`leg_passages`).

A follow-up is searched as its standalone query (`kb.answers.followup`), and the conversation's first question
is searched too: its best passages that the query did not find come after the query's own (at most
KB_CONVERSATION_PASSAGES). "What requirements do I need?", asked after "How do I apply for VA health care?",
names nothing that finds the health-care page; its conversation does. The query's passages stay first and
whole, so a follow-up on another subject loses nothing, and the evidence gate reads the query's alone. They are
for a language model (the extractive answer reads the first `extractive.PASSAGES`), and are searched whatever the
chain, so that what is recorded is what a model would be given (one more search per follow-up)."""

from __future__ import annotations

from django.conf import settings

from kb.answers.pipeline.types import Query, Retrieved, Scope, Trace
from kb.llm import extractive
from kb.search.retrieval import SearchHit, search_in_scope


def retrieve(scope: Scope, query: Query, trace: Trace) -> Retrieved:
    with trace.timed("retrieval_ms"):
        result = search_in_scope(
            query.text,
            scope.read,
            settings.KB_ANSWER_PASSAGES,
            query_vector=query.vector,
            legs_best=leg_passages(),
        )
        conversation = _conversation_hits(scope, query, {hit.chunk_id for hit in result.hits})
    return Retrieved(query=query, result=result, conversation=conversation)


def leg_passages() -> int:
    """How many of the passages are each leg's best rather than fusion's: KB_ANSWER_LEG_PASSAGES, but never among
    the first `extractive.PASSAGES`, which the extractive answer reads and its model was fitted on (fusion's)."""
    return min(settings.KB_ANSWER_LEG_PASSAGES, max(settings.KB_ANSWER_PASSAGES - extractive.PASSAGES, 0))


def _conversation_hits(scope: Scope, query: Query, found: set[int]) -> tuple[SearchHit, ...]:
    extra = settings.KB_CONVERSATION_PASSAGES
    if not query.topic or not extra or not found:
        return ()
    topic = search_in_scope(query.topic, scope.read, settings.KB_ANSWER_PASSAGES + extra)
    return tuple([hit for hit in topic.hits if hit.chunk_id not in found][:extra])
