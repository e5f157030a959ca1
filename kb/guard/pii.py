"""Personal data and secrets: found, validated and masked with typed placeholders such as [EMAIL_1].

No maintained detector runs offline without downloading language models (Presidio needs spaCy models), so
these are patterns, each with a validator where the format has one: payment cards by the Luhn checksum,
IBANs by mod-97, IP addresses by parsing, US SSNs and UK National Insurance numbers by their allocation
rules. tests/guard/test_pii.py holds positive and negative cases for each and a generated set for precision
and recall.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Most specific first: a card number must not be read as a phone number, a key as an e-mail.
_SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"\bsk-ant-[A-Za-z0-9_\-]{10,}",
    r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{30,}\b",
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
    r"\bAIza[0-9A-Za-z_\-]{35}\b",
    r"\bkb_[A-Za-z0-9_\-]{20,}",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
]
_SECRET = re.compile("|".join(f"(?:{p})" for p in _SECRET_PATTERNS))
# "password: hunter22", "api_key=abc123..." (the value is masked; the keyword stays readable)
_KEYED_SECRET = re.compile(
    r"\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)\s?[:=]\s?(?P<value>[^\s'\"]{6,})",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_NINO = re.compile(r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![\w:])")
# A phone number: an optional +country code, then groups of digits with separators; 8-15 digits in all.
_PHONE = re.compile(
    r"(?<![\w+\-/.])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]\d{2,8}){1,4}(?![\w\-/])"
)
_DATE_LIKE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1


def _ip(match: str) -> bool:
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    return not (address.version == 4 and match.count(".") != 3)


def _phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 8 <= len(digits) <= 15 or _DATE_LIKE.match(match.strip()):
        return False
    if match.lstrip().startswith(("+", "(")):
        return True
    # Without a country code: three or more groups ("020 555 0199", "555-123-4567"), or a trunk-prefixed
    # national number in two ("06-12345678"); "2023-2024" and "12.500.000" are not phone numbers.
    separators = len(re.findall(r"[ .\-]", match))
    if "." in match and " " not in match and "-" not in match:
        return False
    return (separators >= 2 and len(digits) >= 9) or (match.startswith("0") and len(digits) >= 10)


@dataclass(frozen=True)
class Detector:
    kind: str  # the placeholder's name: EMAIL, PHONE...
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = lambda match: True
    group: str | int = 0  # the part of the match that is masked


DETECTORS = (
    Detector("SECRET", _SECRET),
    Detector("SECRET", _KEYED_SECRET, group="value"),
    Detector("EMAIL", _EMAIL),
    Detector("IBAN", _IBAN, iban_valid),
    Detector("CARD", _CARD, _card),
    Detector("SSN", _SSN),
    Detector("NINO", _NINO),
    Detector("IP", _IPV4, _ip),
    Detector("IP", _IPV6, _ip),
    Detector("PHONE", _PHONE, _phone),
)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    value: str


# Shapes that are not reported when their checksum fails, but whose digits are not a phone number either.
_RESERVED = (_IBAN, _CARD)


def find(text: str) -> list[Finding]:
    """Non-overlapping findings, most specific detector first."""
    taken: list[tuple[int, int]] = []
    findings: list[Finding] = []
    reserved = [match.span() for pattern in _RESERVED for match in pattern.finditer(text)]
    for detector in DETECTORS:
        for match in detector.pattern.finditer(text):
            start, end = match.span(detector.group)
            value = match.group(detector.group)
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            if not detector.valid(value):
                continue
            if detector.kind == "PHONE" and any(start < r_end and r_start < end for r_start, r_end in reserved):
                continue
            taken.append((start, end))
            findings.append(Finding(detector.kind, start, end, value))
    return sorted(findings, key=lambda f: f.start)


@dataclass
class Masked:
    text: str
    placeholders: dict[str, str] = field(default_factory=dict)  # "[EMAIL_1]" -> the original value

    @property
    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for placeholder in self.placeholders:
            kind = placeholder[1:].rsplit("_", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def mask(text: str, *, keep: Callable[[Finding], bool] = lambda finding: False) -> Masked:
    """`text` with each finding replaced by a typed placeholder (the same value, the same placeholder),
    except those `keep` accepts."""
    findings = [finding for finding in find(text) if not keep(finding)]
    if not findings:
        return Masked(text)
    by_value: dict[tuple[str, str], str] = {}
    counters: dict[str, int] = {}
    pieces = []
    cursor = 0
    for finding in findings:
        key = (finding.kind, finding.value)
        if key not in by_value:
            counters[finding.kind] = counters.get(finding.kind, 0) + 1
            by_value[key] = f"[{finding.kind}_{counters[finding.kind]}]"
        pieces.append(text[cursor : finding.start])
        pieces.append(by_value[key])
        cursor = finding.end
    pieces.append(text[cursor:])
    return Masked("".join(pieces), {placeholder: value for (_, value), placeholder in by_value.items()})


def restore(text: str, placeholders: dict[str, str]) -> str:
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    return text
