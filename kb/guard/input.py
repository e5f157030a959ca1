"""Input guards: limits (length, rate) refuse a request before it is recorded; PII is masked before the
question leaves the machine; a question that reads as prompt injection is blocked (and audited)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from kb.guard import pii
from kb.guard.base import Action, GuardError, Verdict
from kb.text import normalise


@dataclass
class InputContext:
    user: Any
    text: str  # the question as it will be used: masked once the PII guard has run
    placeholders: dict[str, str] = field(default_factory=dict)
    vector: np.ndarray | None = None
    recent_asks: Sequence[datetime] = ()  # the user's ask times in the rate window, for the rate limit
    in_flight: int = 0  # the user's questions being answered right now
    topics: Any = None  # the active off-limits topics' matcher (kb.guard.topics.TopicMatcher), given by the ask path

    typed_vector: np.ndarray | None = None

    def embedding(self) -> np.ndarray:
        """The masked question's embedding, normalised (kb.text.normalise), computed once and shared with the
        caches, retrieval and the off-limits topics."""
        if self.vector is None:
            from kb.search import embeddings

            self.vector = embeddings.embed([normalise(self.text)])[0]
        return self.vector

    def typed_embedding(self) -> np.ndarray:
        """The masked question's embedding as typed (its closing "?" kept): the text the injection and
        toxicity classifiers were trained on (kb.evaluation.train_injection and train_toxicity embed texts as
        they are). Without its question mark an ordinary question reads as an order: "ok and a director?" scores
        0.32 as typed and 0.60 normalised, across the 0.553 threshold. Embedded in one call with the normalised
        text when neither is known yet; the same vector when the two texts are the same."""
        if self.typed_vector is None:
            from kb.search import embeddings

            normalised = normalise(self.text)
            if normalised == self.text:
                self.typed_vector = self.embedding()
            elif self.vector is None:
                self.vector, self.typed_vector = embeddings.embed([normalised, self.text])
            else:
                self.typed_vector = embeddings.embed([self.text])[0]
        return self.typed_vector


# Also shown by the ask page's own counter before anything is sent (templates/answers/ask.html).
QUESTION_TOO_LONG = (
    "Your question is {length} characters long; the limit is {limit}. Shorten it to the part that matters, or ask "
    "about one thing at a time."
)


class LengthGuard:
    """Questions beyond KB_QUESTION_MAX_CHARS are refused with the limit (400), never cut."""

    name = "length"
    before_record = True

    def scan(self, context: InputContext) -> Verdict:
        length = len(context.text)
        limit = settings.KB_QUESTION_MAX_CHARS
        if length > limit:
            raise GuardError(QUESTION_TOO_LONG.format(length=f"{length:,}", limit=f"{limit:,}"))
        return Verdict(self.name, Action.ALLOW, score=length / limit)


RATE_WINDOW = timedelta(seconds=60)


class RateLimitGuard:
    """At most KB_RATE_LIMIT_PER_MINUTE questions per user in any 60 seconds (429, saying when to retry).
    The caller passes the user's recent ask times (`InputContext.recent_asks`, newest first)."""

    name = "rate_limit"
    before_record = True

    def scan(self, context: InputContext) -> Verdict:
        limit = settings.KB_RATE_LIMIT_PER_MINUTE
        if not limit:
            return Verdict(self.name, Action.ALLOW)
        now = timezone.now()
        recent = [moment for moment in context.recent_asks if moment >= now - RATE_WINDOW][:limit]
        if len(recent) < limit:
            return Verdict(self.name, Action.ALLOW, score=len(recent) / limit)
        retry = max(1, math.ceil((min(recent) + RATE_WINDOW - now).total_seconds()))
        raise GuardError(
            f"You have asked {limit} questions in the last minute, the most kb takes. Try again in {retry} s.",
            status=429,
            retry_after_s=retry,
        )


class InFlightGuard:
    """At most KB_USER_ASKS_IN_FLIGHT questions per user being answered at once (429): one account's script
    cannot hold the database pool and the model for everyone else."""

    name = "in_flight"
    before_record = True

    def scan(self, context: InputContext) -> Verdict:
        cap = settings.KB_USER_ASKS_IN_FLIGHT
        if not cap:
            return Verdict(self.name, Action.ALLOW)
        if context.in_flight < cap:
            return Verdict(self.name, Action.ALLOW, score=context.in_flight / cap)
        raise GuardError(
            f"You have {context.in_flight} questions being answered already, the most kb takes at once. Wait for "
            "one to finish, then ask again.",
            status=429,
            retry_after_s=IN_FLIGHT_RETRY_S,
        )


IN_FLIGHT_RETRY_S = 5  # a typical answer streams within a few seconds


class PiiGuard:
    """E-mail addresses, phone numbers, cards, IBANs, national identifiers, IPs and secrets are replaced by
    typed placeholders before the question is stored, embedded or sent to a model."""

    name = "pii"
    before_record = False

    def scan(self, context: InputContext) -> Verdict:
        masked = pii.mask(context.text)
        if not masked.placeholders:
            return Verdict(self.name, Action.ALLOW, score=0)
        context.text = masked.text
        context.placeholders.update(masked.placeholders)
        kinds = masked.kinds
        reason = "masked " + ", ".join(f"{count} {kind.lower()}" for kind, count in sorted(kinds.items()))
        return Verdict(
            self.name, Action.MASK, score=float(sum(kinds.values())), reason=reason, details={"kinds": kinds}
        )


_PLACEHOLDER = re.compile(r"\[([A-Z]+)_\d+\]")
_PLAIN_WORDS = {
    "EMAIL": "my email address",
    "PHONE": "my phone number",
    "CARD": "my card number",
    "IBAN": "my bank account",
    "SSN": "my social security number",
    "NINO": "my national insurance number",
    "IP": "the server address",
    "SECRET": "my key",
}


def _classifier_verdict(name: str, flagged: bool, score: float, rule: str | None, details: dict) -> Verdict:
    """A block saying why (the rule, or the score against the threshold in `details`), or an allow."""
    if not flagged:
        return Verdict(name, Action.ALLOW, score=score, details=details)
    reason = f"matches the rule '{rule}'" if rule else f"classifier score {score:.2f} ≥ {details['threshold']}"
    return Verdict(name, Action.BLOCK, score=score, reason=reason, details=details)


class InjectionGuard:
    """A question that tries to override the assistant's instructions is blocked: a trained classifier on the
    question's embedding (threshold KB_INJECTION_THRESHOLD, or KB_INJECTION_THRESHOLD_OTHER_LANGUAGES for a question
    that does not read as English) plus hand-written rules (kb/guard/injection.py)."""

    name = "injection"
    before_record = False

    def scan(self, context: InputContext) -> Verdict:
        from kb.guard.injection import injection_scores, is_injection

        if context.placeholders:
            # Typed placeholders read as odd tokens to the classifier (a masked e-mail alone raised a plain
            # question to 0.80): score the question with plain words in their place.
            text = _PLACEHOLDER.sub(lambda m: _PLAIN_WORDS.get(m.group(1), "a value"), context.text)
            (result,) = injection_scores([text])
        else:
            (result,) = injection_scores([context.text], np.asarray([context.typed_embedding()]))
        threshold = (
            settings.KB_INJECTION_THRESHOLD if result.english else settings.KB_INJECTION_THRESHOLD_OTHER_LANGUAGES
        )
        details = {"threshold": threshold, "rule": result.rule, "english": result.english}
        return _classifier_verdict(self.name, is_injection(result, threshold), result.score, result.rule, details)


BLOCKED_ANSWER = (
    "This question was not answered: it reads like an attempt to change the assistant's instructions rather "
    "than a question about the documents ({reason}). If that is a mistake, rephrase it as a plain question."
)


class ToxicityGuard:
    """An abusive question (insults, slurs, hate) is not answered: a calm message instead, the exchange recorded
    with the verdict, no model called. A trained classifier on the question's embedding (threshold
    KB_TOXICITY_THRESHOLD) plus narrow rules for abuse aimed at someone (kb/guard/toxicity.py); a swear word in a
    frustrated but real question ("my damn laptop won't boot") is left alone."""

    name = "toxicity"
    before_record = False
    # The reason ("classifier score 0.93") is recorded with the verdict, not shown: the reply stays calm.
    blocked_answer = (
        "This message was not answered: it reads as abusive. kb answers questions about the documents; if "
        "something is not working, describe the problem in plain words and ask again."
    )

    def scan(self, context: InputContext) -> Verdict:
        from kb.guard.toxicity import is_toxic, toxicity_scores

        (result,) = toxicity_scores([context.text], np.asarray([context.typed_embedding()]))
        threshold = settings.KB_TOXICITY_THRESHOLD
        details = {"threshold": threshold, "rule": result.rule}
        return _classifier_verdict(self.name, is_toxic(result, threshold), result.score, result.rule, details)
