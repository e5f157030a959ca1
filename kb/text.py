"""Text helpers shared by every app: sentences, keywords, normalising and cleaning. Pure functions, no Django.

One rule, one place (GUIDE §2, §7): ingestion, retrieval, the guards, the model layer and the ask path all cut
sentences, pick keywords and clean text the same way, so each helper is defined here once.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

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


def _is_keyword(word: str) -> bool:
    """A lower-cased word that carries meaning: not a stop word, more than one letter."""
    return word not in _STOP and len(word) > 1


def keywords(text: str) -> set[str]:
    return {word[:_STEM] for word in (w.lower() for w in _WORD.findall(text)) if _is_keyword(word)}


def keyword_spans(text: str) -> list[tuple[int, int]]:
    """The character spans of the words `keywords` keeps, in order (each occurrence)."""
    return [m.span() for m in _WORD.finditer(text) if _is_keyword(m.group(0).lower())]


# A word the passages do not contain is put right when they contain a word within a small edit distance
# (adjacent swaps count as one): "milage" -> "mileage", "aproval" -> "approval", "saterday" -> "saturday". One
# edit for words under RESPELL_LONG letters, two from there; short words (< RESPELL_MIN_LETTERS) are left alone,
# since one edit turns them into other real words. Chosen on blind-handbook's typo questions (dev); see the README.
RESPELL_MIN_LETTERS = 4
RESPELL_LONG = 8


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each lower-cased word occurs in `texts`: the vocabulary `respell` corrects towards."""
    return Counter(word.lower() for text in texts for word in _WORD.findall(text))


def respell(text: str, vocabulary: Mapping[str, int], known: Callable[[str], bool] = lambda word: False) -> str:
    """`text` with each lower-case word that `vocabulary` lacks (and `known` does not vouch for) replaced by the
    vocabulary's closest word, the most frequent on a tie; words with capitals or digits (names, codes) stay."""
    from rapidfuzz import process
    from rapidfuzz.distance import OSA

    choices = list(vocabulary)

    def fix(match: re.Match[str]) -> str:
        word = match.group()
        if len(word) < RESPELL_MIN_LETTERS or not word.isalpha() or not word.islower():
            return word
        if word in vocabulary or known(word):
            return word
        limit = 1 if len(word) < RESPELL_LONG else 2
        near = process.extract(word, choices, scorer=OSA.distance, score_cutoff=limit, limit=None)
        if not near:
            return word
        best = min(near, key=lambda hit: (hit[1], -vocabulary[hit[0]], hit[0]))
        return best[0]

    return _WORD.sub(fix, text)


# Function words of English and of the other languages employees and the public sets write in (German, Dutch,
# French, Spanish), without the words both sides spell alike ("die", "was", "in", "an", "so", "will", "also").
_ENGLISH_FUNCTION_WORDS = frozenset(
    "the a is are be been do does did what how when where why who which whom whose can could should would may "  # noqa: SIM905
    "must i i'm im you your my me we our us they their he she his her it its this that these those there here "
    "to of for with on at by from about into after before if and or but not no any some have has had get got "
    "am just than then too very".split()
)
_OTHER_FUNCTION_WORDS = (
    frozenset(
        "ich du er wir ihr sie und oder aber nicht kein keine ist sind bin bist war waren wird werden hat haben "  # noqa: SIM905
        "der das den dem des ein eine einen einem einer mit auf für von zu zum zur bei nach wie wann wo warum wer "
        "welche welcher mein meine dein deine sich auch noch schon nur mir mich dir dich uns euch "
        "het een en van ik je jij wij niet zijn voor met op naar hoe wat waar wanneer "
        "le la les un une des et est sont pour dans avec sur qui quoi quand comment où je tu nous vous ne pas "
        "el los las del al y es son por para con sin que qué cómo cuándo dónde yo usted mi su se lo".split()
    )
    - _ENGLISH_FUNCTION_WORDS
)


def looks_english(text: str) -> bool:
    """Whether `text` reads as English: it does unless it holds more function words of German, Dutch, French or
    Spanish than of English ("Wann hat die letzte WM stattgefunden?" does not; "password please" does). The
    embedding model reads English: classifiers on its vectors are less sure of other languages."""
    words = [word.lower() for word in _WORD.findall(text)]
    other = sum(word in _OTHER_FUNCTION_WORDS for word in words)
    return other <= sum(word in _ENGLISH_FUNCTION_WORDS for word in words)


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
