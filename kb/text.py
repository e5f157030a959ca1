"""Text helpers shared by every app: sentences, keywords, normalising and cleaning. Pure functions, no Django.

One rule, one place (GUIDE §2, §7): ingestion, retrieval, the guards, the model layer and the ask path all cut
sentences, pick keywords and clean text the same way, so each helper is defined here once.
"""

from __future__ import annotations

import re
import unicodedata

# --- sentences ----------------------------------------------------------------------------------------------

# Abbreviations whose period is not a sentence end even before a capital ("Dr. Smith", "Fig. 3").
# "etc." is left out on purpose: it ends sentences more often than not.
ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr prof sr jr st mt ft vs v cf fig figs no nos nr vol vols inc ltd co corp llc plc approx
    dept est al ca resp incl excl ref refs sec ch art para pp p op ed eds gen gov rev hon capt col lt sgt
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun bzw usw ggf inkl z.b e.g i.e
    u.s u.k a.m p.m
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"')\]\u201d\u2019]*(?=\s|$)|[\u3002\uff01\uff1f]+")
_DOTTED_ABBREVIATION = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]?$")


def _is_sentence_end(text: str, match: re.Match[str]) -> bool:
    punctuation = match.group()
    if punctuation[0] in "\u3002\uff01\uff1f":
        return True
    rest = text[match.end() :].lstrip()
    if not rest:
        return True
    if rest[0].islower():
        return False
    if not punctuation.startswith(".") or punctuation.startswith(".."):
        return True
    word_start = max(text.rfind(" ", 0, match.start()), text.rfind("\n", 0, match.start()), -1) + 1
    word = text[word_start : match.start()].lstrip("(\"'\u201c\u2018[")
    if not word:
        return True
    if word.lower() in ABBREVIATIONS or _DOTTED_ABBREVIATION.match(word):
        return False
    # an initial, as in "J. R. Smith"
    return not (len(word) == 1 and word.isupper())


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of the sentences of text[start:end], trimmed of surrounding whitespace, covering all its non-space
    characters. Newlines always end a sentence, so list items and table rows are never joined."""
    end = len(text) if end is None else end
    spans = []
    for line in re.finditer(r"[^\n]+", text[start:end]):
        line_start = start + line.start()
        line_text = line.group()
        cursor = 0
        for match in _SENTENCE_END.finditer(line_text):
            if _is_sentence_end(line_text, match):
                spans.extend(trimmed_spans(text, line_start + cursor, line_start + match.end()))
                cursor = match.end()
        spans.extend(trimmed_spans(text, line_start + cursor, line_start + len(line_text)))
    return spans


def trimmed_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    segment = text[start:end]
    stripped = segment.strip()
    if not stripped:
        return []
    lead = len(segment) - len(segment.lstrip())
    return [(start + lead, start + lead + len(stripped))]


# --- keywords -----------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words that say nothing about what a question is after.
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "may",
        "me",
        "might",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "shall",
        "should",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "about",
        "any",
        "all",
        "also",
        "am",
        "get",
        "got",
        "many",
        "much",
        "please",
        "tell",
        "know",
        "need",
        "want",
    ]
)
_STEM = 5  # compare words by their first letters: "reimbursed" meets "reimbursement"


def keywords(text: str) -> set[str]:
    return {word[:_STEM] for word in (w.lower() for w in _WORD.findall(text)) if word not in _STOP and len(word) > 1}


# --- normalising and cleaning -------------------------------------------------------------------------------

_TRAILING = re.compile(r"[\s?!.,;:。？！]+$")


def normalise(question: str) -> str:
    """Case, spacing and closing punctuation do not change what a question asks ("  Where is X ?!" -> "where is x")."""
    return _TRAILING.sub("", " ".join(question.casefold().split()))


# NUL cannot be stored in or sent as PostgreSQL text; other control characters only confuse the analyzer.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def has_lone_surrogates(text: str) -> bool:
    """A UTF-16 surrogate on its own (a JSON "\\ud800" escape) is not text: it cannot be encoded or stored."""
    return any("\ud800" <= character <= "\udfff" for character in text)


def text_clean(text: str) -> str:
    """The text with control characters and runs of spaces replaced by single spaces."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text or "")).strip()


# Invisible characters that split a keyword without changing how it reads ("ig\u200bnore").
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"), None)
_LINE_SPACES = re.compile(r"[^\S\n]+")


def fold(text: str) -> str:
    """Fold look-alike forms (full-width letters, ligatures, curly apostrophes) and hidden characters so that
    the rules see what a reader sees."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return _LINE_SPACES.sub(" ", text)


# --- shingles ------------------------------------------------------------------------------------------------

SHINGLE_WORDS = 8  # a run of 8 words in common is copying, not coincidence
_ANY_WORD = re.compile(r"\w+")


def shingles(text: str, size: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = [word.lower() for word in _ANY_WORD.findall(text)]
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}
