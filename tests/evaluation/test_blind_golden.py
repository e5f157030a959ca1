"""The blind golden set (tests/data/golden/blind-handbook): written by someone who had not seen kb's code,
settings or other sets, from the golden format alone. A dev set (sets.py); blind-clinic is the held-out one. Here
only its shape is checked; `evaluate_answers` measures kb on it."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

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
