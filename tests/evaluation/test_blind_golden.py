"""The blind golden set (tests/data/golden/blind-handbook): written by someone who had not seen kb's code,
settings or other sets, from the golden format alone. A dev set (sets.py); blind-utility and blind-software are
the held-out ones. Here only the sets' shapes are checked; `evaluate_answers` measures kb on them."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kb.evaluation.answers.golden import golden_load

BLIND = Path(__file__).resolve().parent.parent / "data" / "golden" / "blind-handbook"


def test_the_blind_set_loads_and_names_only_its_own_documents():
    items = golden_load(BLIND / "golden.jsonl")
    documents = {path.name for path in (BLIND / "docs").iterdir()}
    assert len(items) == 120 and len(documents) == 14
    assert {doc for item in items for doc in item.docs} <= documents
    kinds = Counter(
        "injection" if item.injection else "answerable" if item.answerable else "unanswerable" for item in items
    )
    assert kinds == {"answerable": 75, "unanswerable": 30, "injection": 15}


def test_the_authors_own_check_passes():
    # Every must_include fact verbatim in its document, table facts only in tables, sections real headings.
    done = subprocess.run([sys.executable, "check.py"], cwd=BLIND, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("OK"), done.stdout[-2000:] + done.stderr[-2000:]


UTILITY = BLIND.parent / "blind-utility"


def test_the_third_blind_set_loads_and_its_authors_check_passes():
    """blind-utility (test): a water utility's policies, written blind in session 25 after blind-clinic's hard
    questions had been read while routing rules were written. Only its shape is checked here."""
    items = golden_load(UTILITY / "golden.jsonl")
    documents = {path.name for path in (UTILITY / "docs").iterdir()}
    assert len(items) == 115 and len(documents) == 12
    assert {doc for item in items for doc in item.docs} <= documents
    assert sum(item.follows is not None for item in items) == 6
    done = subprocess.run([sys.executable, "check.py"], cwd=UTILITY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "OK" in done.stdout.splitlines()[-1], done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize(
    ("name", "questions", "documents", "follow_ups"),
    [("blind-retail", 116, 13, 6), ("blind-software", 117, 12, 7), ("blind-hotel", 117, 13, 7),
     ("blind-council", 117, 13, 7)],
)  # fmt: skip
def test_the_later_blind_sets_load_and_their_authors_checks_pass(name, questions, documents, follow_ups):
    """Written blind from the golden format alone: blind-retail (dev, session 26) for learning the extractive
    answerer's decision, blind-software (test, session 26, never read), blind-hotel and blind-council (session
    39: measured once unseen, then dev). Only their shapes are checked here."""
    folder = BLIND.parent / name
    items = golden_load(folder / "golden.jsonl")
    names = {path.name for path in (folder / "docs").iterdir()}
    assert len(items) == questions and len(names) == documents
    assert {doc for item in items for doc in item.docs} <= names
    assert sum(item.follows is not None for item in items) == follow_ups
    assert sum(item.injection for item in items) == 6
    done = subprocess.run([sys.executable, "check.py"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "passed" in done.stdout.strip().splitlines()[-1].lower()
