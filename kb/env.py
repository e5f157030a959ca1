"""Strict parsing of settings from environment variables.

A bad value stops start-up with one line naming the variable and the form it expects; a traceback
would bury that line, so entry points catch `EnvError` and print only its message.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class EnvError(Exception):
    """A malformed environment variable; the message is one line meant for the operator."""


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str:
    value = _raw(name)
    if value is None or value == "":
        if required:
            raise EnvError(f"{name} is not set: set it to a non-empty value (see .env.example)")
        return default or ""
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean: use one of true/false, 1/0, yes/no, on/off")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise EnvError(f"{name}={value!r} is not an integer: use a whole number such as {default}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise EnvError(f"{name}={number} is out of range: use a whole number {bounds}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None, maximum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise EnvError(f"{name}={value!r} is not a number: use a decimal such as {default}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise EnvError(f"{name}={number} is out of range: use a number between {minimum} and {maximum}")
    return number


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, spelt in any case; returned as spelt in `choices`."""
    value = _raw(name)
    if value is None or value == "":
        return default
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise EnvError(f"{name}={value!r} is not one of its values: use {', '.join(choices[:-1])} or {choices[-1]}")


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise EnvError(f"{name}={value!r} has an empty item: use a comma-separated list such as a,b,c")
    return items


def env_path(name: str, default: Path, *, base: Path) -> Path:
    value = _raw(name)
    path = Path(value) if value else default
    if not path.is_absolute():
        path = base / path
    if path.exists() and not path.is_dir():
        raise EnvError(f"{name}={str(path)!r} is a file: use a directory path (it is created if missing)")
    return path


def env_url(name: str, *, schemes: tuple[str, ...], example: str) -> str | None:
    """Return the URL in `name`, or None when unset; refuse anything that is not a well-formed URL."""
    value = _raw(name)
    if value is None or value == "":
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise EnvError(f"{name} is malformed: use the form {example}") from None
    if parts.scheme not in schemes:
        raise EnvError(f"{name} has scheme {parts.scheme or '(none)'!r}: use the form {example}")
    return value


def env_prices(name: str) -> dict[str, tuple[float, float, float, float]]:
    """`model=input/output/cache_write/cache_read;...` in USD per million tokens."""
    value = _raw(name)
    if not value:
        return {}
    form = f"use {name}=model=IN/OUT/CACHE_WRITE/CACHE_READ;model2=... (USD per million tokens)"
    prices: dict[str, tuple[float, float, float, float]] = {}
    for item in value.split(";"):
        model, _, numbers = item.strip().partition("=")
        parts = numbers.split("/")
        try:
            values = tuple(float(part) for part in parts)
        except ValueError:
            values = ()
        if not model.strip() or len(values) != 4 or any(v < 0 for v in values):
            raise EnvError(f"{name} has a malformed item {item.strip()!r}: {form}")
        prices[model.strip()] = values  # type: ignore[assignment]
    return prices
