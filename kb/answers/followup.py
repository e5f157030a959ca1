"""Follow-up questions rewritten into standalone search queries, from the conversation so far.

"What is the hotel limit in Amsterdam?" then "And in Rotterdam?" searches for "What is the hotel limit in
Rotterdam?". The rules are deliberately simple (no model call, so they work offline and cost nothing):
- "and/what about/how about <preposition> X": the previous query with its last phrase of that preposition
  replaced by X (or X appended when it has none);
- "and/what about/how about X": the previous query plus X;
- a short question, or one that leans on a pronoun ("is it paid?"): the previous query plus the question;
- anything else is taken as standalone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_LEAD = re.compile(
    r"^\s*(?:and|but|also|so|what about|how about|and what about|and how about|same for|what of)\b[\s,]*(?P<rest>.*?)"
    r"[\s?.!]*$",
    re.IGNORECASE | re.DOTALL,
)
_PREPOSITIONS = "in|for|at|on|from|to|during|with|by|under|about|after|before|per"
_PREPOSITIONAL = re.compile(rf"^(?P<prep>{_PREPOSITIONS})\s+(?P<object>.+)$", re.IGNORECASE | re.DOTALL)
_PRONOUNS = frozenset(
    ["it", "its", "that", "this", "they", "them", "those", "these", "there", "he", "she", "his", "her", "their", "one"]
)
_WORD = re.compile(r"[\w']+")
SHORT_QUESTION_WORDS = 4


def standalone_query(question: str, previous: str | None) -> str:
    """The query to search for `question`, asked after `previous` (the last standalone query, or None)."""
    question = " ".join(question.split())
    if not previous:
        return question
    previous = " ".join(previous.split())
    lead = _LEAD.match(question)
    if lead and lead.group("rest"):
        rest = lead.group("rest")
        phrase = _PREPOSITIONAL.match(rest)
        if phrase:
            prep = phrase.group("prep")
            same = list(re.finditer(rf"\b{re.escape(prep)}\s+[^,;:?.!]+", previous, re.IGNORECASE))
            if same:
                last = same[-1]
                return f"{previous[: last.start()]}{prep} {phrase.group('object')}{previous[last.end() :]}".strip()
        return f"{previous.rstrip('?.! ')} {rest}"
    words = [word.lower() for word in _WORD.findall(question)]
    if len(words) <= SHORT_QUESTION_WORDS or _PRONOUNS & set(words):
        return f"{previous.rstrip('?.! ')} {question}"
    return question


def standalone_queries(questions: Sequence[str], previous: str | None = None) -> list[str]:
    """The query of each question of a conversation, asked in turn after `previous` (`standalone_query`)."""
    queries = []
    for question in questions:
        previous = standalone_query(question, previous)
        queries.append(previous)
    return queries


def search_queries(questions: Sequence[str]) -> list[str]:
    """What the ask path searches for each question of a conversation whose every turn was answered: the first
    normalised (`kb.text.normalise`, as the caches need it), each later one rewritten after the one before."""
    from kb.text import normalise

    if not questions:
        return []
    first = normalise(questions[0])
    return [first, *standalone_queries(questions[1:], first)]
