"""Versioned prompts: one file per version under prompts/, each pinned by its sha256 in versions.lock.

A prompt's text may not change under the same id (a test compares every file with the lock): a new text is
a new version, so that every recorded answer names the exact prompt that produced it. A file holds the
system prompt, a line `--- user ---`, and the user message as a `string.Template` with `$passages`,
`$history` and `$question`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kb.llm.providers import Passage

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
LOCK_FILE = PROMPTS_DIR / "versions.lock"
USER_SEPARATOR = "\n--- user ---\n"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
HISTORY_ANSWER_CHARS = 600  # of each earlier answer given to the model with a follow-up


class PromptError(LookupError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str
    sha256: str
    system: str
    user_template: Template

    @property
    def version(self) -> str:
        """What an answer records: the id and the first 12 hex digits of the content hash."""
        return f"{self.id}@{self.sha256[:12]}"

    def user_message(self, *, passages: str, question: str, history: str = "") -> str:
        return self.user_template.substitute(passages=passages, question=question, history=history)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def available() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.txt"))


def lock() -> dict[str, str]:
    return json.loads(LOCK_FILE.read_text(encoding="utf-8"))


@functools.cache
def get(prompt_id: str) -> Prompt:
    if not _ID.match(prompt_id or ""):
        raise PromptError(f"{prompt_id!r} is not a prompt id: use one of {', '.join(available())}")
    path = PROMPTS_DIR / f"{prompt_id}.txt"
    if not path.exists():
        raise PromptError(f"no prompt {prompt_id!r}: use one of {', '.join(available())}")
    text = path.read_text(encoding="utf-8")
    if USER_SEPARATOR not in text:
        raise PromptError(f"prompt {prompt_id} has no '--- user ---' line between system and user parts")
    system, user = text.split(USER_SEPARATOR, 1)
    return Prompt(id=prompt_id, sha256=file_sha256(path), system=system.strip(), user_template=Template(user))


# --- rendering what goes into a prompt's $passages, $history and $question ------------------------------------


def quoted(text: str) -> str:
    """The question and passages sit inside XML-like delimiters: text must not be able to close them."""
    return text.replace("<", "\u2039").replace(">", "\u203a")


def _attribute(value: str) -> str:
    return quoted(value).replace('"', "'")


def render_passages(passages: Sequence[Passage]) -> str:
    blocks = []
    for p in passages:
        attributes = f'n="{p.n}" document="{_attribute(p.title)}"'
        if p.heading:
            attributes += f' section="{_attribute(p.heading)}"'
        if p.page:
            attributes += f' page="{_attribute(p.page)}"'
        if p.untrusted:
            attributes += ' untrusted="true"'
        blocks.append(f"<passage {attributes}>\n{quoted(p.text)}\n</passage>")
    return "\n".join(blocks)


def render_history(turns: Iterable[tuple[str, str]]) -> str:
    """Earlier (question, answer) turns of the conversation, oldest first; long answers are cut."""
    rendered = []
    for question, answer in turns:
        if len(answer) > HISTORY_ANSWER_CHARS:
            answer = answer[:HISTORY_ANSWER_CHARS] + "\u2026"
        rendered.append(f"<turn>\n<asked>{quoted(question)}</asked>\n<answered>{quoted(answer)}</answered>\n</turn>")
    if not rendered:
        return ""
    return "<conversation_so_far>\n" + "\n".join(rendered) + "\n</conversation_so_far>\n\n"
