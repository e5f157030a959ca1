"""PII detection: positive and negative cases per kind, and precision/recall on a generated set."""

from __future__ import annotations

import random
import string

import pytest

from kb.guard import pii

POSITIVE = {
    "EMAIL": ["jane.doe@example.com", "a.b-c+tag@mail.example.co.uk"],
    "PHONE": ["+31 20 123 4567", "+1 (555) 123-4567", "020 555 0199", "555-123-4567", "06-12345678",
              "+44 20 7946 0958"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "IBAN": ["NL91 ABNA 0417 1643 00", "DE89370400440532013000", "GB82 WEST 1234 5698 7654 32"],
    "SSN": ["123-45-6789", "078-05-1121"],
    "NINO": ["AB 12 34 56 C", "JG103759A"],
    "IP": ["192.168.1.20", "10.0.0.1", "2001:db8::1", "fe80::1ff:fe23:4567:890a"],
    "SECRET": ["sk-ant-api03-abcdefghijklmnopqrst", "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
               "kb_abcdefghijklmnopqrstuvwxyz123456"],
}  # fmt: skip
NEGATIVE = [
    "Order 12345678 shipped on 2024-05-01.",
    "We use version 2.3.1 of the app, room 4.12, ISO 27001:2022.",
    "Invoice INV-2024-0042 is due; call extension 4444 at 10:30:00.",
    "The 2023-2024 budget is 12.500.000 euros, up 10.5 percent.",
    "Card 4111 1111 1111 1112 fails its checksum.",
    "IBAN NL91 ABNA 0417 1643 01 has a wrong check digit.",
    "SSN 000-12-3456 and 666-12-3456 are never issued.",
    "Address 999.1.1.1 is not an IP address.",
    "The password policy asks for 14 characters.",
    "Reset your token in the portal; keys rotate every 90 days.",
    "Postcode 1012 AB, Amsterdam; route 66; 3 x 4 = 12.",
]


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, values in POSITIVE.items() for v in values])
def test_each_kind_is_found_and_masked(kind, value):
    masked = pii.mask(f"Please check {value} for me.")
    assert masked.text == f"Please check [{kind}_1] for me.", masked.text
    assert masked.placeholders == {f"[{kind}_1]": value}
    assert pii.restore(masked.text, masked.placeholders) == f"Please check {value} for me."


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_are_left_alone(text):
    assert pii.find(text) == [], pii.find(text)


def test_keyed_secrets_mask_the_value_only():
    assert (
        pii.mask("password: hunter2222 and api_key=abcdef123456").text == "password: [SECRET_1] and api_key=[SECRET_2]"
    )


def test_the_same_value_gets_the_same_placeholder():
    masked = pii.mask("Mail a@b.example or a@b.example, or c@d.example")
    assert masked.text == "Mail [EMAIL_1] or [EMAIL_1], or [EMAIL_2]"


def test_checksums():
    assert pii.luhn_valid("4111111111111111") and not pii.luhn_valid("4111111111111112")
    assert pii.iban_valid("NL91ABNA0417164300") and not pii.iban_valid("NL91ABNA0417164301")


# --- a generated set ----------------------------------------------------------------------------------------------


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if pii.luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


def _grouped(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _typo(card: str) -> str:
    return card[:-1] + str((int(card[-1]) + 1) % 10)  # a wrong check digit: Luhn fails


def _iban(rng: random.Random) -> str:
    country, bank = rng.choice([("NL", "ABNA"), ("DE", ""), ("FR", ""), ("GB", "WEST")])
    length = {"NL": 18, "DE": 22, "FR": 27, "GB": 22}[country]
    bban = bank + "".join(rng.choice(string.digits) for _ in range(length - 4 - len(bank)))
    for check in range(100):
        candidate = f"{country}{check:02d}{bban}"
        if pii.iban_valid(candidate):
            return " ".join(candidate[i : i + 4] for i in range(0, len(candidate), 4))
    raise AssertionError("unreachable")


GENERATORS = {
    "EMAIL": lambda r: (f"{r.choice(['anna', 'li.wei', 'j.smith', 'ops-team'])}{r.randint(1, 99)}"
                        f"@{r.choice(['example.com', 'corp.example.org'])}"),
    "PHONE": lambda r: r.choice([f"+31 6 {r.randint(1000, 9999)} {r.randint(1000, 9999)}",
                                 f"+1 ({r.randint(200, 999)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
                                 f"0{r.randint(10, 99)} {r.randint(100, 999)} {r.randint(1000, 9999)}"]),
    "CARD": lambda r: _grouped(_luhn_complete(r, r.choice(["4", "51", "55"]), 16)),
    "IBAN": _iban,
    "SSN": lambda r: f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
    "NINO": lambda r: (f"{r.choice(['AB', 'CE', 'JH', 'PR'])} {r.randint(10, 99)} {r.randint(10, 99)} "
                       f"{r.randint(10, 99)} {r.choice('ABCD')}"),
    "IP": lambda r: f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
    "SECRET": lambda r: "sk-ant-api03-" + "".join(r.choice(string.ascii_letters + string.digits) for _ in range(32)),
}  # fmt: skip
NEAR_MISSES = [
    lambda r: f"order {r.randint(10_000_000, 99_999_999)}",
    lambda r: f"on {r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    lambda r: f"version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}",
    lambda r: f"invoice INV-{r.randint(2000, 2030)}-{r.randint(1, 9999):04d}",
    lambda r: f"{r.randint(1, 99)}.{r.randint(100, 999)}.{r.randint(100, 999)} euros",
    lambda r: f"card {_typo(_luhn_complete(r, '4', 16))} (a typo)",
    lambda r: f"room {r.randint(1, 9)}.{r.randint(10, 99)} at {r.randint(8, 18)}:{r.randint(10, 59)}",
    lambda r: f"the {r.randint(2000, 2030)}-{r.randint(2000, 2030)} plan",
]
TEMPLATES = [
    "Hi, my details are {} and I need help with my expenses.",
    "Can you update the record for {} before Friday?",
    "Why was {} rejected by the system?",
]


def test_precision_and_recall_on_a_generated_set(capsys):
    rng = random.Random(20261124)
    true_positives = false_positives = false_negatives = 0
    per_kind: dict[str, list[int]] = {}
    for _ in range(60):
        for kind, generate in GENERATORS.items():
            value = generate(rng)
            noise = rng.choice(NEAR_MISSES)(rng)
            text = rng.choice(TEMPLATES).format(f"{value}, {noise}")
            found = pii.find(text)
            hit = any(f.kind == kind and f.value == value for f in found)
            true_positives += hit
            false_negatives += not hit
            false_positives += sum(1 for f in found if f.value != value)
            per_kind.setdefault(kind, [0, 0])[0 if hit else 1] += 1
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / (true_positives + false_negatives)
    with capsys.disabled():
        print(f"\n[pii] generated set: precision {precision:.3f}, recall {recall:.3f}, per kind (hit, miss) {per_kind}")
    assert precision >= 0.97 and recall >= 0.97
