"""Off-limits topics: questions the company does not want kb to answer itself (legal advice about an individual
case, medical advice, another employee's pay ...), recognised by meaning from the examples a knowledge admin
wrote for each topic.

How: each topic has a small logistic regression on the sentence embedding kb already computes for every question
(all-MiniLM-L6-v2, 384-d), trained when a topic is saved (`train_weights`, a few milliseconds of Newton steps):
its examples against every other topic's examples, every topic's near-miss examples ("where is the pay review
timetable?" for "another employee's pay") and a shipped list of ordinary employee questions
(kb/guard/data/topic_background.txt). A question is off limits when the highest topic probability reaches
KB_TOPIC_THRESHOLD. An answer is checked sentence by sentence with KB_ANSWER_TOPIC_THRESHOLD.

Chosen on the dev half of tests/data/topics/questions.jsonl against nearest-example and centroid similarity
(kb/evaluation/calibrate_topics.py; README "Off-limits topics"): with the same examples the classifier had the
higher recall at the precision asked for, because it learns which words of a topic's examples matter (a named
colleague, "should I") rather than how alike two questions read overall.

Pure: the guard is given a `TopicMatcher` (kb/guard/topic_store.py builds it from the Topic rows and caches it per
process) and the question's vector the ask path computed already: a check is one (topics x 384) product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REFUSE = "refuse"
HAND_TO_PERSON = "hand_to_person"
# L2 strength of the per-topic classifiers (scikit-learn's C: larger fits the examples more closely); chosen on
# the dev half with the threshold (kb/evaluation/calibrate_topics.py).
DEFAULT_C = 10.0


@dataclass(frozen=True)
class TopicSpec:
    """One active topic as the guard needs it (no database row)."""

    id: int
    name: str
    response: str  # REFUSE or HAND_TO_PERSON
    message: str
    contact: str
    weight: np.ndarray  # (d,) the trained classifier
    bias: float

    def answer(self) -> str:
        """What the asker reads instead of an answer: the topic's message and, when the question goes to a person,
        whom to ask (kb has no escalation of its own yet, so the contact is named)."""
        message = self.message.strip()
        if self.response == HAND_TO_PERSON and self.contact.strip():
            return f"{message} Please ask {self.contact.strip()}."
        return message


@dataclass(frozen=True)
class TopicMatch:
    topic: TopicSpec | None  # the most probable topic (None when no topic is configured)
    probability: float

    def off_limits(self, threshold: float) -> bool:
        return self.topic is not None and self.probability >= threshold

    def as_details(self, threshold: float) -> dict:
        return {
            "topic": self.topic.name if self.topic else None,
            "topic_id": self.topic.id if self.topic else None,
            "threshold": threshold,
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class TopicMatcher:
    """Every active topic's classifier in one matrix: a question costs one product."""

    def __init__(self, topics: Sequence[TopicSpec]) -> None:
        self.topics = tuple(topics)
        self._weights = np.stack([t.weight for t in self.topics]).astype(np.float32) if self.topics else None
        self._bias = np.asarray([t.bias for t in self.topics], dtype=np.float32)

    def __bool__(self) -> bool:
        return bool(self.topics)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(texts, topics) probabilities for unit-length embeddings (kb.search.embeddings.embed rows)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if self._weights is None:
            return np.zeros((len(vectors), 0), dtype=np.float32)
        return _sigmoid(vectors @ self._weights.T + self._bias)

    def match_many(self, vectors: np.ndarray) -> list[TopicMatch]:
        probabilities = self.probabilities(vectors)
        if not self.topics:
            return [TopicMatch(None, 0.0) for _ in range(len(probabilities))]
        best = probabilities.argmax(axis=1)
        return [TopicMatch(self.topics[int(j)], float(probabilities[i, j])) for i, j in enumerate(best)]

    def match(self, vector: np.ndarray) -> TopicMatch:
        return self.match_many(np.asarray([vector]))[0]


EMPTY = TopicMatcher(())


def train_weights(
    examples: Sequence[np.ndarray], negatives: np.ndarray, background: np.ndarray, c: float = DEFAULT_C
) -> list[tuple[np.ndarray, float]]:
    """One (weight, bias) per topic: its examples (rows of unit vectors) against the other topics' examples, the
    near-miss examples and the background questions; classes weighted alike ("balanced"), L2 penalty 1/(2c) on
    the weight (not the bias), as scikit-learn's LogisticRegression(C=c, class_weight="balanced") fits."""
    trained = []
    for i, own in enumerate(examples):
        others = [e for j, e in enumerate(examples) if j != i and len(e)]
        rest = np.concatenate([*others, negatives, background]) if others or len(negatives) or len(background) else None
        if not len(own) or rest is None or not len(rest):
            raise ValueError("a topic needs examples, and something that is not the topic to tell it from")
        x = np.concatenate([own, rest]).astype(np.float64)
        y = np.concatenate([np.ones(len(own)), np.zeros(len(rest))])
        sample = np.where(y == 1, len(y) / (2 * len(own)), len(y) / (2 * len(rest)))
        trained.append(_newton(x, y, sample, c))
    return trained


def _newton(x: np.ndarray, y: np.ndarray, sample: np.ndarray, c: float, steps: int = 50) -> tuple[np.ndarray, float]:
    features = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(features.shape[1])
    penalty = np.full(features.shape[1], 1.0 / c)
    penalty[-1] = 0.0  # the bias is not penalised
    for _ in range(steps):
        p = _sigmoid(features @ theta)
        gradient = features.T @ (sample * (p - y)) + penalty * theta
        hessian = (features * (sample * p * (1 - p))[:, None]).T @ features + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-7:
            break
    return theta[:-1].astype(np.float32), float(theta[-1])


def lines(text: str) -> list[str]:
    """An admin's examples, one per line: blank lines and surrounding spaces dropped, each once."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and line.lower() not in seen:
            seen[line.lower()] = line
    return list(seen.values())


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def vector_from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float32).copy()


# --- The guards (listed in KB_INPUT_GUARDS / KB_OUTPUT_GUARDS) ----------------------------------------------------

OFF_LIMITS = "off_limits"  # the refusal reason of a question or answer on an off-limits topic
ANSWER_WITHHELD = "This answer was withheld: it strays into a topic kb does not answer ({name})."


def _blocked(guard: str, match: TopicMatch, threshold: float, reason: str, answer: str):
    from kb.guard.base import Action, Verdict

    assert match.topic is not None
    details = match.as_details(threshold) | {
        "response": match.topic.response,
        "answer": answer,
        "refusal_reason": OFF_LIMITS,
    }
    return Verdict(guard, Action.BLOCK, score=round(match.probability, 4), reason=reason, details=details)


class TopicGuard:
    """A question on an off-limits topic is not answered: the topic's message (and whom to ask) instead, the
    exchange recorded with the verdict, no model called. The ask path passes the active topics' matcher
    (`InputContext.topics`) and the question's embedding; threshold KB_TOPIC_THRESHOLD."""

    name = "topics"
    before_record = False
    needs_topics = True

    def scan(self, context):
        from django.conf import settings

        from kb.guard.base import Action, Verdict

        matcher = getattr(context, "topics", None)
        if not matcher:
            return Verdict(self.name, Action.ALLOW)
        match = matcher.match(context.embedding())
        threshold = settings.KB_TOPIC_THRESHOLD
        if not match.off_limits(threshold):
            return Verdict(
                self.name, Action.ALLOW, score=round(match.probability, 4), details=match.as_details(threshold)
            )
        assert match.topic is not None
        reason = f"off-limits topic “{match.topic.name}” (score {match.probability:.2f} ≥ {threshold})"
        return _blocked(self.name, match, threshold, reason, match.topic.answer())


class TopicOutputGuard:
    """An answer with a sentence on an off-limits topic is withheld, with the topic's message. Each sentence is
    matched like a question (threshold KB_ANSWER_TOPIC_THRESHOLD); its embedding is the one the grounding guard
    computed when it ran first (`OutputContext.vectors`), so an ordinary answer costs one small product."""

    name = "topics"
    needs_topics = True

    def scan(self, context):
        from django.conf import settings

        from kb.guard.base import Action, Verdict
        from kb.guard.output import UNSUPPORTED, answer_sentences, claim_key

        matcher = getattr(context, "topics", None)
        if not matcher or context.refused or not context.answer.strip():
            return Verdict(self.name, Action.ALLOW)
        # As the grounding guard embedded them (its [unsupported] mark is not part of the sentence).
        keys = (claim_key(s.replace(UNSUPPORTED, "")) for s in answer_sentences(context.answer))
        texts = [t for t in keys if len(t.split()) >= 4]
        if not texts:
            return Verdict(self.name, Action.ALLOW)
        known = context.vectors
        missing = [t for t in texts if t not in known]
        if missing:
            from kb.search import embeddings

            known.update(zip(missing, embeddings.embed(missing), strict=True))
        matches = matcher.match_many(np.stack([known[t] for t in texts]))
        best = max(matches, key=lambda m: m.probability)
        threshold = settings.KB_ANSWER_TOPIC_THRESHOLD
        if not best.off_limits(threshold):
            return Verdict(
                self.name, Action.ALLOW, score=round(best.probability, 4), details=best.as_details(threshold)
            )
        assert best.topic is not None
        reason = f"a sentence reads as the off-limits topic “{best.topic.name}” (score {best.probability:.2f})"
        answer = f"{ANSWER_WITHHELD.format(name=best.topic.name)} {best.topic.answer()}"
        return _blocked(self.name, best, threshold, reason, answer)
