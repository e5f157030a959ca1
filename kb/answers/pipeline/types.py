"""What the stages of the ask path hand each other (GUIDE §3).

Every stage result is frozen and passed forward; what a stage learns on the way (guard verdicts, notices for
the reader, milliseconds per step, the cache's record) goes into the one `Trace` of the exchange. A stage that
ends the exchange early returns a `Stop` holding the `Ending` to record: the outcome of an exchange is the
`Stop` that ended it (or the answer that went through every stage), never inferred from fields left empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kb.answers.citations import Source
from kb.llm.prompts import Prompt
from kb.llm.providers import ModelRequest, Usage
from kb.ops.config import Configuration
from kb.search.retrieval import ReadScope, SearchHit, SearchResult


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


@dataclass(frozen=True)
class AskRequest:
    """What was asked: the question as typed (cleaned, not yet masked), by whom, in which conversation."""

    user: Any
    question: str
    conversation_id: int | None = None
    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Trace:
    """What the stages record on the way; it goes into the exchange row and its audit event."""

    started: float
    verdicts: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    cache: dict = field(default_factory=lambda: {"kind": "skipped"})
    route: dict = field(default_factory=dict)  # stage 6's record: tier, why, chain, residency

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Milliseconds of the block under latency[step]."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.latency[step] = ms_since(started)

    def elapsed_ms(self) -> float:
        return ms_since(self.started)


@dataclass(frozen=True)
class Scope:
    """Stage 1: what the asker may read and which versions and models answer them."""

    read: ReadScope
    index_version: int
    prompt: Prompt
    chain: tuple[str, ...]
    namespace: str  # the caches' key: scope + index version + prompt version + chain
    spent: Mapping[str, float] = field(default_factory=dict)  # today's spending: user_spent, global_spent
    configuration: Configuration | None = None  # the answer configuration (kb/ops); None: the environment's


@dataclass(frozen=True)
class Guarded:
    """Stage 2: the question as it is stored, embedded and sent from here on (personal data masked)."""

    question: str
    placeholders: Mapping[str, str]  # masked values, restored for the asker only
    vector: np.ndarray | None  # the masked question's embedding, when a guard computed it
    block: Stop | None = None  # a guard blocked the question: recorded (masked) and answered with the reason


@dataclass(frozen=True)
class Turn:
    """An earlier exchange of the conversation, as a follow-up needs it."""

    question: str
    answer: str
    search_query: str


@dataclass(frozen=True)
class Opened:
    """The pending exchange row, written before anything slow happens."""

    exchange_id: int
    conversation_id: int
    history: tuple[Turn, ...]
    topic: str = ""  # with a history: what the conversation's first answered question searched for

    @property
    def use_cache(self) -> bool:
        # A follow-up's meaning depends on its conversation: only standalone questions use the caches.
        return not self.history


@dataclass(frozen=True)
class Query:
    """Stage 3 on a miss: what retrieval searches for, and its embedding."""

    text: str
    vector: np.ndarray
    topic: str = ""  # a follow-up's conversation topic (`Opened.topic`) when it is not the query itself


@dataclass(frozen=True)
class Retrieved:
    """Stage 4: the passages found for the query."""

    query: Query
    result: SearchResult
    # A follow-up's: the best passages for its conversation's first question that the query did not find
    # (KB_CONVERSATION_PASSAGES), given after the query's own.
    conversation: tuple[SearchHit, ...] = ()

    @property
    def hits(self) -> list[SearchHit]:
        """The passages given to the answerer, numbered in this order."""
        return [*self.result.hits, *self.conversation]


@dataclass(frozen=True)
class Evidence:
    """Stage 5 passed: numbered passages worth answering from, and the model request built from them."""

    retrieved: Retrieved
    evidence_score: float | None
    sources: Mapping[int, Source]
    model_request: ModelRequest


@dataclass(frozen=True)
class Routed:
    """Stage 6: the tier, why, and the chain that may receive this question's passages."""

    tier: str
    chain: tuple[str, ...]
    why: tuple[str, ...]
    residency: bool = False  # the internal-models-only rule applied
    restricted_documents: tuple[int, ...] = ()
    withheld: tuple[str, ...] = field(default=())  # links the residency rule took out

    def as_record(self) -> dict:
        return {
            "tier": self.tier,
            "why": list(self.why),
            "chain": list(self.chain),
            "residency": self.residency,
            "restricted_documents": list(self.restricted_documents),
            "withheld": list(self.withheld),
        }


@dataclass(frozen=True)
class Ending:
    """An exchange's end as it is recorded and returned."""

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


@dataclass(frozen=True)
class Stop:
    """A stage ended the exchange: this is what is recorded (and `retrieved`, when retrieval had run)."""

    ending: Ending
    retrieved: Retrieved | None = None
    evidence_score: float | None = None


@dataclass(frozen=True)
class Begun:
    """The database phase before any model call (stages 1-5) and where it ended."""

    request: AskRequest
    scope: Scope
    guarded: Guarded
    opened: Opened
    next: Stop | Evidence
    trace: Trace
    route: Routed | None = None  # stage 6, when the question goes to the chain

    @property
    def retrieved(self) -> Retrieved | None:
        return self.next.retrieved

    @property
    def evidence_score(self) -> float | None:
        return self.next.evidence_score
