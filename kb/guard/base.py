"""One interface for every guard: `scan(...)` returns a `Verdict` with a score and a reason.

Guards are small classes listed in settings (KB_INPUT_GUARDS, KB_OUTPUT_GUARDS) and run in that order;
every verdict goes into the exchange record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string


class Action(StrEnum):
    ALLOW = "allow"  # nothing found
    MASK = "mask"  # something was replaced (PII masked, invalid markers removed)
    FLAG = "flag"  # shown, with a warning
    BLOCK = "block"  # not answered / not shown


@dataclass
class Verdict:
    guard: str
    action: Action
    score: float | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.action == Action.BLOCK

    def as_dict(self) -> dict:
        data = asdict(self)
        data["action"] = self.action.value
        return data


class GuardError(Exception):
    """A request a guard refuses before anything is recorded (too long, too many): status and a message."""

    def __init__(self, message: str, status: int = 400, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@cache
def _load(paths: tuple[str, ...]) -> tuple:
    return tuple(import_string(path)() for path in paths)


def input_guards() -> tuple:
    return _load(tuple(settings.KB_INPUT_GUARDS))


def output_guards() -> tuple:
    return _load(tuple(settings.KB_OUTPUT_GUARDS))
