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
from dataclasses import dataclass
from pathlib import Path
from string import Template

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
LOCK_FILE = PROMPTS_DIR / "versions.lock"
USER_SEPARATOR = "\n--- user ---\n"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


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
