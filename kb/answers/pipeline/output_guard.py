"""Stage 8, output guard: every `[n]` names a given passage, each sentence's support is scored (unsupported
ones are marked), the system prompt and text of documents the asker may not read are blocked, personal data
the passages did not contain is masked. A block replaces the answer; the final citations are taken from the
guarded text, and numbered for the reader in order of use (kb/answers/citations.py `as_shown`)."""

from __future__ import annotations

import dataclasses

from ingest.models import Chunk, Document
from kb.answers import citations as citation_parser
from kb.answers.models import Outcome
from kb.answers.pipeline.input_guard import topics_for
from kb.answers.pipeline.types import Begun, Ending, Evidence
from kb.guard import output as guards
from kb.guard.base import Action, output_guards
from kb.search.retrieval import ReadScope, search_in_scope

LEAK_SEARCH_PASSAGES = 5  # passages of other documents compared with an answer for copied text


def unreadable_search_for(user) -> guards.UnreadableSearch | None:
    """What the leak guard needs: passages of documents `user` may not read that share words with a text.
    None when the user may read everything."""
    if ReadScope.for_user(user).everything:
        return None

    def search(text: str) -> list[tuple[int, str]]:
        hits = search_in_scope(text, ReadScope.all_documents(), k=LEAK_SEARCH_PASSAGES, mode="bm25").hits
        found = {hit.document_id for hit in hits}
        readable = set(Document.objects.readable_by(user).filter(pk__in=found).values_list("pk", flat=True))
        return [(hit.document_id, hit.text) for hit in hits if hit.document_id not in readable]

    return search


def guard_sources(evidence: Evidence) -> dict[int, guards.Source]:
    """The passages given to the model, with their stored embeddings (read here, after the answer, not before
    the first token: only grounding needs them)."""
    chunk_ids = [source.chunk_id for source in evidence.sources.values()]
    stored = {pk: (vector, untrusted) for pk, vector, untrusted in
              Chunk.objects.filter(pk__in=chunk_ids).values_list("pk", "embedding", "untrusted")}  # fmt: skip
    return {
        n: guards.Source(n, s.chunk_id, s.document_id, s.text, *stored.get(s.chunk_id, (None, False)))
        for n, s in evidence.sources.items()
    }


def output_guard(begun: Begun, evidence: Evidence, draft: Ending) -> Ending:
    trace = begun.trace
    context = guards.OutputContext(
        answer=draft.answer,
        question=begun.guarded.question,
        sources=guard_sources(evidence),
        system_prompt=evidence.model_request.system,
        cited=[citation["n"] for citation in draft.citations],
        invalid=draft.invalid,
        refused=draft.refused,
        model=draft.model,
        placeholders=dict(begun.guarded.placeholders),
        unreadable_search=unreadable_search_for(begun.request.user),
        topics=topics_for(output_guards()),
    )
    with trace.timed("output_guards_ms"):
        for guard in output_guards():
            verdict = guard.scan(context)
            trace.verdicts.append(verdict.as_dict())
            if verdict.action == Action.BLOCK:
                return dataclasses.replace(
                    draft,
                    outcome=Outcome.BLOCKED,
                    answer=verdict.details.get("answer") or guards.BLOCKED_OUTPUT.format(reason=verdict.reason),
                    citations=[],
                    refused=True,
                    refusal_reason=verdict.details.get("refusal_reason") or f"blocked_{verdict.guard}",
                )
            if verdict.details.get("notice"):
                trace.notices.append(verdict.details["notice"])
            if verdict.action == Action.FLAG and verdict.guard == "citations":
                trace.notices.append("This answer cites no source: treat it with care.")
    parsed = citation_parser.parse(context.answer, set(evidence.sources))
    answer = parsed.answer.strip()
    unsupported = sum(1 for item in context.grounding if not item["supported"])
    if unsupported:
        trace.notices.append(
            f"{unsupported} sentence(s) are not supported by the passages they cite and are marked [unsupported]."
        )
    # Numbered for the reader ([1] [2] [3] in order of use) only now: the guards above score what the model cited.
    shown = citation_parser.as_shown(
        answer, citation_parser.citations(answer, parsed.cited, evidence.sources), context.grounding
    )
    return dataclasses.replace(draft, answer=shown.answer, citations=shown.citations, grounding=shown.grounding)
