"""Screens streamed answer text sentence by sentence before it reaches the user: personal data the passages
did not contain is masked, and if the model starts repeating the system prompt nothing more is shown. The
whole answer then goes through the output guards, and the final answer replaces the streamed text."""

from __future__ import annotations

import re

from kb.guard import pii
from kb.text import shingles

_BOUNDARY = re.compile(r"[.!?](?:\s|$)|\n")
MAX_HELD_CHARS = 300  # a sentence longer than this is released in pieces


class StreamScreen:
    def __init__(self, *, system_prompt: str, allowed_text: str) -> None:
        self.prompt_shingles = shingles(system_prompt)
        self.allowed_text = allowed_text
        self.held = ""
        self.shown = ""
        self.leaked = False

    def feed(self, text: str) -> str:
        """Text that may be shown now (possibly empty while a sentence is incomplete)."""
        if self.leaked:
            return ""
        self.held += text
        cut = -1
        for match in _BOUNDARY.finditer(self.held):
            cut = match.end()
        if cut < 0 and len(self.held) < MAX_HELD_CHARS:
            return ""
        if cut < 0:
            cut = len(self.held)
        ready, self.held = self.held[:cut], self.held[cut:]
        return self._release(ready)

    def flush(self) -> str:
        ready, self.held = self.held, ""
        return self._release(ready) if ready and not self.leaked else ""

    def reset(self) -> None:
        """The partial answer was discarded (a failed model): start over."""
        self.held = ""
        self.shown = ""
        self.leaked = False

    def _release(self, ready: str) -> str:
        if len(shingles(self.shown + ready) & self.prompt_shingles) >= 2:
            self.leaked = True
            return ""
        safe = pii.mask(ready, keep=lambda finding: finding.value in self.allowed_text).text
        self.shown += safe
        return safe
