"""Entry-point helpers: turn a settings error into one readable line and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from kb.env import EnvError

T = TypeVar("T")


def fail_cleanly(func: Callable[[], T]) -> T:
    try:
        return func()
    except EnvError as exc:
        print(f"kb: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
