"""Golden files (kb/evaluation/answers/golden.py): follow-up questions, by `follows` or by `context`, and the
errors that name the line and what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.evaluation.answers.golden import GoldenError, golden_load

LINE = {"answerable": True, "doc": "a.md", "section": None, "answer": "", "must_include": [], "kind": "lookup"}


def golden(tmp_path: Path, *rows: dict) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({**LINE, **row}) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_follow_up_names_an_earlier_question_or_carries_its_earlier_turns(tmp_path):
    context = [{"role": "user", "text": "Hotel limit in Amsterdam?"}, {"role": "agent", "text": "150 euros."}]
    items = golden_load(golden(
        tmp_path,
        {"id": "a", "question": "What is the hotel limit in Amsterdam?"},
        {"id": "b", "question": "And in Rotterdam?", "follows": "a"},
        {"id": "c", "question": "And in Utrecht?", "context": context, "agent_reply": None},
    ))  # fmt: skip
    assert [(item.follows, item.context) for item in items] == [
        (None, ()),
        ("a", ()),
        (None, (("user", "Hotel limit in Amsterdam?"), ("agent", "150 euros."))),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"follows": "later"}, r"golden.jsonl:2: follows 'later', which is not an earlier question's id"),
        ({"follows": "b"}, r"golden.jsonl:2: follows 'b', which is this question's own id"),
        ({"follows": ""}, r"golden.jsonl:2: .*follows must be the id of an earlier question"),
        ({"follows": "a", "context": [{"role": "user", "text": "x"}]}, "either follows .* or context .*, not both"),
        ({"context": []}, "context must be a non-empty list of earlier turns"),
        ({"context": [{"role": "bot", "text": "x"}]}, "context turn 1 needs a role, user or agent"),
        ({"context": [{"role": "user", "text": " "}]}, "context turn 1 needs a non-empty text"),
        ({"context": [{"role": "agent", "text": "Hello."}]}, "context must start with the user's turn"),
    ],
)
def test_a_follow_up_that_cannot_be_asked_is_refused_naming_its_line(tmp_path, row, message):
    path = golden(
        tmp_path,
        {"id": "a", "question": "Q?"},
        {"id": "b", "question": "And?", **row},
        {"id": "later", "question": "Q?"},
    )
    with pytest.raises(GoldenError, match=message):
        golden_load(path)
