"""Stage 4, retrieve: hybrid search (pgvector HNSW and exact BM25, fused by reciprocal rank) of the query
within the asker's read scope; the permission and current-version filters are inside the SQL."""

from __future__ import annotations

from django.conf import settings

from kb.answers.pipeline.types import Query, Retrieved, Scope, Trace
from kb.search.retrieval import search_in_scope


def retrieve(scope: Scope, query: Query, trace: Trace) -> Retrieved:
    with trace.timed("retrieval_ms"):
        result = search_in_scope(query.text, scope.read, settings.KB_ANSWER_PASSAGES, query_vector=query.vector)
    return Retrieved(query=query, result=result)
