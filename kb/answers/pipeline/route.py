"""Stage 6, route: which chain answers this question, and which links may receive its passages.

The router picks a tier (KB_ROUTES: `fast` and `strong`, each its own chain) from signals that need no model
call and cost microseconds: a follow-up, comparison or procedure wording, a long or many-part question, and
how many documents the top passages span. Then two rules narrow the tier's chain, in this order:
- today's budget (kb/llm/cost.py), as for KB_MODELS;
- residency: when any passage given to the model (or an earlier turn of the conversation under the rule) comes
  from a document marked "internal models only" (itself, or through one of its access groups), only links on
  the company's own infrastructure (KB_ENDPOINTS entries marked `internal`) and the extractive answer may
  receive it. Residency is never traded for availability: with no allowed link left the answer is extractive.

Every exchange records its route: tier, why, the chain used and whether the residency rule applied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from django.conf import settings
from django.db.models import Q

from ingest.models import Document
from kb.answers.models import Exchange
from kb.answers.pipeline.types import Evidence, Opened, Routed, Scope, Trace, ms_since
from kb.llm.cost import budget_links
from kb.llm.providers import EXTRACTIVE, provider_for
from kb.ops.config import environment
from kb.search.retrieval import SearchHit

FAST, STRONG, DEFAULT = "fast", "strong", "default"
RESIDENCY_NOTICE = (
    "This answer draws on documents that may be sent only to the company's own models, and none of those is "
    "available: it quotes the documents directly."
)
# Wording of the hard kinds (issue #19): comparisons and procedures need a model that reasons over several
# passages. Chosen on the golden sets' dev questions (tests/bench/test_routing_bench.py).
COMPARISON = re.compile(
    r"\b(compar\w*|differen\w*|differ|versus|vs\.?|better|worse|cheaper|faster|rather than|instead of|"
    r"pros and cons|which (one|is|should)|both|between)\b",
    re.IGNORECASE,
)
PROCEDURE = re.compile(
    r"\b(how (do|can|should|would) (i|we|you)|how to|how do i go about|steps?|procedure|process|walk me through|"
    r"what (do|should|must) (i|we) do|what do i (need|have) to do|instructions|set ?up|apply for|sign up|register)\b",
    re.IGNORECASE,
)
# A question of several parts ("who do I call, and how long until...?"): clauses that open with an interrogative.
_CLAUSES = re.compile(r"[?.!,;:\u2013\u2014]| - |\b(?:and|or|also)\b", re.IGNORECASE)
_INTERROGATIVE = frozenset(
    {"how", "what", "who", "whom", "when", "where", "which", "why", "would", "will", "can", "could"}
    | {"do", "does", "did", "is", "are", "should", "may"}
)


def question_parts(question: str) -> int:
    """How many clauses of the question open with an interrogative word."""
    parts = 0
    for clause in _CLAUSES.split(question):
        words = clause.split()
        if words and words[0].lower().replace("\u2019", "'").removesuffix("'s") in _INTERROGATIVE:
            parts += 1
    return parts


def documents_spanned(hits: Sequence[SearchHit]) -> int:
    """Distinct documents with a passage that both retrieval legs rank near the top (vector and BM25 rank at most
    KB_ROUTE_AGREED_RANK): two such documents mean the question likely needs both. Fused scores alone do not
    separate them: reciprocal-rank fusion scores the top passages nearly alike."""
    limit = settings.KB_ROUTE_AGREED_RANK
    agreed = {
        hit.document_id
        for hit in hits
        if hit.vector_rank is not None and hit.bm25_rank is not None and max(hit.vector_rank, hit.bm25_rank) <= limit
    }
    return len(agreed)


def tier_for(question: str, *, follow_up: bool, documents: int) -> tuple[str, tuple[str, ...]]:
    """The tier and why, from cheap signals only (no model call, no database)."""
    why = []
    if follow_up:
        why.append("follow-up")
    if COMPARISON.search(question):
        why.append("comparison wording")
    if PROCEDURE.search(question):
        why.append("procedure wording")
    if len(question.split()) > settings.KB_ROUTE_LONG_QUESTION_WORDS:
        why.append(f"long question (> {settings.KB_ROUTE_LONG_QUESTION_WORDS} words)")
    if question_parts(question) > 1:
        why.append("several questions")
    if documents > 1:
        why.append(f"passages span {documents} documents")
    return (STRONG, tuple(why)) if why else (FAST, ("single-document lookup",))


def restricted_documents(document_ids: set[int]) -> tuple[int, ...]:
    """The documents among these that are marked internal-models-only, themselves or through an access group."""
    if not document_ids:
        return ()
    marked = Q(internal_models_only=True) | Q(access_groups__internal_models_only=True)
    found = Document.objects.filter(pk__in=document_ids).filter(marked).values_list("pk", flat=True).distinct()
    return tuple(sorted(found))


def _conversation_restricted(opened: Opened) -> bool:
    """An earlier turn whose answer (in the history given to the model) may quote restricted text: it was
    answered under the rule, or it cites a document marked today (a cached answer is recorded without a route,
    and a document may have been marked since)."""
    if not opened.history:
        return False
    earlier = Exchange.objects.filter(conversation_id=opened.conversation_id).exclude(pk=opened.exchange_id)
    if earlier.filter(routing__residency=True).exists():
        return True
    cited = {
        citation.get("document_id")
        for citations in earlier.values_list("citations", flat=True)
        for citation in citations or ()
        if isinstance(citation, dict)
    }
    return bool(restricted_documents({document_id for document_id in cited if isinstance(document_id, int)}))


def _residency(chain: list[str]) -> tuple[list[str], list[str]]:
    allowed = [link for link in chain if link == EXTRACTIVE or provider_for(link).internal]
    return allowed, [link for link in chain if link not in allowed]


def route(scope: Scope, opened: Opened, evidence: Evidence, trace: Trace) -> Routed:
    started = time.perf_counter()
    hits = evidence.retrieved.result.hits
    configuration = scope.configuration or environment()
    if configuration.routes:
        documents = documents_spanned(hits)
        tier, why = tier_for(evidence.model_request.question, follow_up=bool(opened.history), documents=documents)
        spent = {"user_spent": scope.spent.get("user_spent", 0.0), "global_spent": scope.spent.get("global_spent", 0.0)}
        decision = budget_links(list(configuration.routes.get(tier, configuration.models)), **spent)
        chain = decision.links
        if decision.notice:
            trace.notices.append(decision.notice)
    else:
        tier, why, chain = DEFAULT, ("KB_ROUTES unset",), list(scope.chain)
    trace.latency["route_ms"] = ms_since(started)
    sources = {source.document_id for source in evidence.sources.values()}
    restricted = restricted_documents(sources)
    routed = Routed(tier, tuple(chain), why)
    if restricted or _conversation_restricted(opened):
        allowed, withheld = _residency(chain)
        routed = Routed(tier, tuple(allowed), why, True, restricted, tuple(withheld))
        if withheld and allowed == [EXTRACTIVE]:  # no allowed model: the extractive answer, with a notice
            trace.notices.append(RESIDENCY_NOTICE)
    trace.route = routed.as_record()
    return routed
