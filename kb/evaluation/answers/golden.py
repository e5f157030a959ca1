"""Golden question sets: one JSON object per line.

    {"id": "travel-03", "question": "When may I fly business class?", "answerable": true,
     "doc": "travel-and-expenses.docx", "section": "Booking travel",
     "answer": "For flights longer than 6 hours.", "must_include": ["flights longer than 6 hours"],
     "kind": "paraphrase"}

`doc` names the expected document by file name (a list when several documents answer it, null when none
does); `section` is the last heading of the passage that answers it (a list, one per doc, when several
documents answer it; null when unknown); `answer` is a reference answer for people reading the report;
`must_include` lists facts that a correct answer states (matched after normalisation, see
`metrics.fact_found`); `kind` groups questions in the report. Questions with `answerable: false` should be
declined; `kind: "injection"` marks prompt-injection attempts, scored by the block rate instead of the
refusal metrics.

A follow-up question is asked in a conversation, in one of two ways:
- `"follows": "travel-03"`: the id of an earlier question of the same file; it is asked in that question's
  conversation, after it (and after whatever else followed it), so its history is what the pipeline answered;
- `"context": [{"role": "user", "text": "..."}, {"role": "agent", "text": "..."}, ...]`: the earlier turns,
  oldest first, as doc2dial's follow-up files give them; the conversation is set up with these turns (the
  agent's text as the answer to the user turn before it) and the question is asked after them.
Other keys (a data set's own, such as `agent_reply`) are left alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

INJECTION = "injection"
FIELDS = ("id", "question", "answerable", "doc", "section", "answer", "must_include", "kind")
USER, AGENT = "user", "agent"
ROLES = (USER, AGENT)


class GoldenError(ValueError):
    """A golden file that cannot be used; the message names the line and what is wrong."""


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    answerable: bool
    docs: tuple[str, ...]  # expected document file names; empty when no document answers it
    section: str | None  # shown in reports; several documents' sections joined by " / "
    answer: str
    must_include: tuple[str, ...]
    kind: str
    follows: str | None = None  # the id of the earlier question whose conversation this one continues
    context: tuple[tuple[str, str], ...] = ()  # earlier turns (role, text), oldest first
    sections: tuple[str, ...] = ()  # every expected section (one per document for a multi-document question)

    @property
    def injection(self) -> bool:
        return self.kind == INJECTION


def _item(row: object) -> GoldenItem:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    doc = row["doc"]
    docs = (doc,) if isinstance(doc, str) else tuple(doc or ())
    facts = row["must_include"] or []
    section = row["section"]
    sections = (section,) if isinstance(section, str) else tuple(section) if isinstance(section, list) else ()
    if section is not None and not isinstance(section, str | list):
        sections = (section,)  # refused by the checks below
    checks = [
        (isinstance(row["id"], str | int) and str(row["id"]).strip(), "id must be a non-empty string"),
        (isinstance(row["question"], str) and row["question"].strip(), "question must be a non-empty string"),
        (isinstance(row["answerable"], bool), "answerable must be true or false"),
        (all(isinstance(d, str) and d for d in docs), "doc must be a file name, a list of them, or null"),
        (all(isinstance(x, str) for x in sections), "section must be a string, a list of them (one per doc), or null"),
        (isinstance(row["answer"], str), "answer must be a string"),
        (isinstance(facts, list) and all(isinstance(f, str) and f.strip() for f in facts),
         "must_include must be a list of strings"),
        (isinstance(row["kind"], str) and row["kind"].strip(), "kind must be a non-empty string"),
        (not row["answerable"] or docs, "an answerable question needs its expected doc"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    follows, context = _conversation(row)
    return GoldenItem(
        id=str(row["id"]).strip(),
        question=row["question"],
        answerable=row["answerable"],
        docs=docs,
        section=" / ".join(sections) or None,
        answer=row["answer"],
        must_include=tuple(facts),
        kind=row["kind"].strip(),
        follows=follows,
        context=context,
        sections=tuple(x for x in sections if x),
    )


def _conversation(row: dict) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The optional `follows` and `context` of a follow-up question, checked."""
    follows, context = row.get("follows"), row.get("context")
    if follows is not None and context is not None:
        raise ValueError("give either follows (an earlier question's id) or context (earlier turns), not both")
    if follows is not None and not (isinstance(follows, str | int) and str(follows).strip()):
        raise ValueError("follows must be the id of an earlier question in this file")
    turns: list[tuple[str, str]] = []
    if context is not None:
        if not isinstance(context, list) or not context:
            raise ValueError('context must be a non-empty list of earlier turns [{"role": "user", "text": ...}]')
        for n, turn in enumerate(context, 1):
            if not isinstance(turn, dict) or turn.get("role") not in ROLES:
                raise ValueError(f"context turn {n} needs a role, {' or '.join(ROLES)}")
            if not isinstance(turn.get("text"), str) or not turn["text"].strip():
                raise ValueError(f"context turn {n} needs a non-empty text")
            turns.append((turn["role"], turn["text"]))
        if turns[0][0] != USER:
            raise ValueError("context must start with the user's turn (the agent answers a question)")
    return (None if follows is None else str(follows).strip()), tuple(turns)


def golden_load(path: Path) -> list[GoldenItem]:
    """The items of a golden file; GoldenError naming the line for a malformed one or a repeated id."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: cannot be read ({exc})") from None
    items: list[GoldenItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _item(json.loads(line))
        except ValueError as exc:
            raise GoldenError(f"{path}:{number}: not a golden line ({', '.join(FIELDS)}): {exc}") from None
        if item.id in seen:
            raise GoldenError(f"{path}:{number}: the id {item.id!r} is used twice; give each question its own")
        if item.follows is not None and item.follows not in seen:
            where = "is this question's own" if item.follows == item.id else "is not an earlier question's"
            raise GoldenError(
                f"{path}:{number}: follows {item.follows!r}, which {where} id in this file; "
                "a follow-up names a question above it"
            )
        seen.add(item.id)
        items.append(item)
    if not items:
        raise GoldenError(f"{path}: no questions")
    return items


def golden_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
