"""Frozen stage inputs built by hand, for the unit tests of each stage of the ask path (kb/answers/pipeline/).

Each test calls one stage with real database objects (the `corpus` fixture: three documents ingested through
the real pipeline) and inputs made here; `stage_inputs` runs the stages before the one under test only where
a test needs their real output (retrieved passages, an opened exchange)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from django.conf import settings

from kb.answers.pipeline.evidence import evidence
from kb.answers.pipeline.record import open_exchange
from kb.answers.pipeline.retrieve import retrieve
from kb.answers.pipeline.types import AskRequest, Begun, Evidence, Guarded, Opened, Query, Scope, Trace, Turn
from kb.llm import cache, prompts
from kb.llm.providers import EXTRACTIVE
from kb.search import embeddings
from kb.search.models import IndexState
from kb.search.retrieval import ReadScope
from kb.text import normalise

HOTEL = "What is the hotel limit per night in Amsterdam?"
PRIMARY = "anthropic:claude-sonnet-5-5"
FALLBACK = "anthropic:claude-haiku-5-5"


@pytest.fixture
def trace() -> Trace:
    return Trace(started=time.perf_counter())


def scope_for(user, chain: tuple[str, ...] = (EXTRACTIVE,), read: ReadScope | None = None) -> Scope:
    read = read or ReadScope.for_user(user)
    state = IndexState.objects.filter(pk=1).first()
    index_version = state.version if state else 0
    prompt = prompts.get(settings.KB_PROMPT_VERSION)
    namespace = cache.namespace(
        scope_key=read.key, index_version=index_version, prompt_version=prompt.version, chain=list(chain)
    )
    return Scope(read=read, index_version=index_version, prompt=prompt, chain=chain, namespace=namespace)


def guarded_of(question: str, vector=None) -> Guarded:
    return Guarded(question=question, placeholders={}, vector=vector)


def opened_with(*history: Turn, exchange_id: int = 0, conversation_id: int = 0) -> Opened:
    return Opened(exchange_id=exchange_id, conversation_id=conversation_id, history=tuple(history))


def query_of(text: str) -> Query:
    text = normalise(text)
    return Query(text=text, vector=embeddings.embed([text])[0])


@dataclass(frozen=True)
class StageInputs(Begun):
    """A `Begun` as the stages after evidence receive it, with its evidence at hand."""

    @property
    def begun(self) -> Begun:
        return self

    @property
    def evidence(self) -> Evidence:
        assert isinstance(self.next, Evidence), self.next
        return self.next


def stage_inputs(user, question: str = HOTEL, *, chain: tuple[str, ...] = (EXTRACTIVE,), **request) -> StageInputs:
    """The inputs of the stages after evidence: a scope and guarded question made here, the exchange opened
    (a real pending row), the question searched and gated by the real stages."""
    trace = Trace(started=time.perf_counter())
    ask = AskRequest(user=user, question=question, **request)
    scoped = scope_for(user, chain)
    guarded = guarded_of(question)
    opened = open_exchange(ask, scoped, guarded, trace)
    query = query_of(question) if opened.use_cache else Query(question, embeddings.embed([question])[0])
    outcome = evidence(scoped, guarded, opened, retrieve(scoped, query, trace))
    return StageInputs(ask, scoped, guarded, opened, outcome, trace)
