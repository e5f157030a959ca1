"""Toxic-content detector: a logistic regression on the sentence embeddings kb already computes, plus a short
list of precise rules for abuse aimed at a person (the assistant, a colleague) and for slurs.

Same shape as the prompt-injection detector (kb/guard/injection.py), and for the same reason: the ask path embeds
every question anyway, so scoring it costs one dot product. The weights are trained offline by
`python -m kb.evaluation.train_toxicity` on the Davidson et al. (2017) tweets (hate speech and offensive language
against neither, cleaned of retweet markers, mentions and links) and on ordinary questions and passages, and are
shipped as `kb/guard/data/toxicity_model.json` with a metadata record: what they were trained on, which thresholds
were chosen on which held-out ordinary texts, and what they measured.

What counts as toxic: Davidson's "hate speech" and "offensive" classes together (slurs, insults, sexual abuse
aimed at people). Mild profanity in an ordinary question ("my damn laptop won't boot again, what do I do?") is
not abuse: the thresholds are chosen so that at most 1% of ordinary employee questions are flagged, and the rules
name a target (you, a person, a group) rather than a swear word alone.

Two thresholds on the same score: KB_TOXICITY_THRESHOLD for questions (blocked with a calm message) and
KB_ANSWER_TOXICITY_THRESHOLD for the sentences of an answer (masked, with a notice).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb.guard import injection
from kb.guard.injection import InjectionModel
from kb.text import fold

MODEL_PATH = Path(__file__).resolve().parent / "data" / "toxicity_model.json"


@dataclass(frozen=True)
class ToxicityScore:
    score: float  # classifier probability in 0..1
    rule: str | None  # name of the first matching rule, or None


def _rule(name: str, pattern: str) -> tuple[str, re.Pattern[str]]:
    return name, re.compile(pattern, re.IGNORECASE)


_INSULT_NOUNS = (
    r"(?:idiot|moron|imbecile|retard|dumbass|jackass|asshole|arsehole|bastard|bitch|cunt|dickhead|prick|twat|"
    r"wanker|piece\s+of\s+(?:shit|crap|garbage|trash)|scumbag)s?"
)
_SLURS = r"(?:nigg(?:er|a|ah|az)s?|faggots?|kikes?|spics?|wetbacks?|trann(?:y|ies)|towelheads?|ragheads?|beaners?)"

# Deliberately narrow: each rule needs a target (you / a person) or a slur, never a swear word on its own.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # "you stupid bot", "you useless piece of shit", "you're an idiot".
    _rule(
        "insult_to_you",
        rf"\byou(?:'re|\s+are)\s+(?:an?\s+|such\s+an?\s+|the\s+)?(?:\w+\s+)?{_INSULT_NOUNS}\b|"
        rf"\byou\s+(?:\w+\s+)?{_INSULT_NOUNS}\b|"
        r"\byou\s+(?:stupid|useless|worthless|pathetic|fucking|fuckin|dumb)\s+\w+",
    ),
    # "fuck you", "go fuck yourself", "screw you", "kill yourself", "shut the fuck up".
    _rule(
        "abuse_to_you",
        r"\b(?:fuck|screw|damn)\s+(?:you|u|off|yourself)\b|\bgo\s+(?:fuck|kill)\s+yourself\b|"
        r"\bkill\s+yourself\b|\bkys\b|\bshut\s+the\s+fuck\s+up\b|\bstfu\b",
    ),
    # Slurs: no ordinary question needs them.
    _rule("slur", rf"\b{_SLURS}\b"),
)


def first_rule(text: str) -> str | None:
    text = fold(text)
    for name, pattern in RULES:
        if pattern.search(text):
            return name
    return None


def load_model(path: Path = MODEL_PATH) -> InjectionModel:
    """The weights (a logistic regression in the injection model's layout) and their metadata."""
    return injection.load_model(path)


def toxicity_scores(texts: list[str], vectors: np.ndarray | None = None) -> list[ToxicityScore]:
    """vectors: the texts' embeddings from kb.search.embeddings.embed when the caller has them; else computed."""
    if not texts:
        return []
    probabilities = load_model().score_texts(texts, vectors)
    return [ToxicityScore(float(p), first_rule(text)) for text, p in zip(texts, probabilities, strict=True)]


def is_toxic(s: ToxicityScore, threshold: float) -> bool:
    return s.rule is not None or s.score >= threshold


def recorded_thresholds() -> dict[str, float]:
    """The thresholds chosen when the shipped weights were trained (settings start from these)."""
    return dict(load_model().metadata["thresholds"])


_WORD = re.compile(r"[a-z]+")


@functools.cache
def gate_words() -> frozenset[str]:
    """Words that almost only toxic training tweets use (chosen by the trainer, stored with the weights): an
    answer sentence is embedded and scored only if it has one of them or a rule hit."""
    return frozenset(json.loads(MODEL_PATH.read_text(encoding="utf-8")).get("gate_words", ()))


def candidate_sentence(text: str, words: frozenset[str] | None = None) -> bool:
    """Whether an answer sentence is worth scoring: a rule hit or a gate word (a word lookup, no embedding).
    words: the gate list (the shipped one by default; the trainer passes the one it is choosing)."""
    folded = fold(text).lower()
    words = gate_words() if words is None else words
    return first_rule(folded) is not None or any(word in words for word in _WORD.findall(folded))
