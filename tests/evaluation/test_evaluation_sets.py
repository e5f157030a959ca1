"""The named evaluation sets (kb/evaluation/answers/sets.py): roles, skipping what is absent, SQuAD 2.0 made
into a corpus folder and golden file, doc2dial's asked-back questions as their own kind. Built on small data
files written here in the layout of ../shared/eval, so that the rules are checked whatever is mounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.evaluation.answers.golden import golden_load
from kb.evaluation.answers.sets import (
    ASKED_BACK,
    DEV,
    NEAR_MISS,
    ROLES,
    TEST,
    evaluation_sets,
    sets_select,
    squad_split,
)

EXPECTED = {
    "demo": DEV,
    "blind-handbook": DEV,
    "blind-clinic": DEV,
    "blind-utility": TEST,
    "blind-retail": DEV,
    "blind-software": TEST,
    "blind-hotel": DEV,
    "blind-council": DEV,
    "doc2dial-dev": DEV,
    "doc2dial-test": TEST,
    "doc2dial-followup-dev": DEV,
    "doc2dial-followup-test": TEST,
    "squad-dev": DEV,
    "squad-test": TEST,
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def checkout(settings, tmp_path):
    """A checkout at tmp/repo with ../shared/eval beside it, and its own data folder."""
    settings.BASE_DIR = tmp_path / "repo"
    settings.KB_DATA_DIR = tmp_path / "repo" / "var"
    (tmp_path / "repo").mkdir()
    return tmp_path


def squad_files(root: Path, articles: int = 4, paragraphs: int = 3) -> None:
    folder = root / "shared" / "eval" / "squad2-dev-cs224n"
    passages, questions = [], []
    for a in range(articles):
        title = f"Article {a}"
        for p in range(paragraphs):
            passages.append({"_id": f"{title}#{p}", "title": title, "text": f"Paragraph {p} of {title} says {a * p}."})
            questions.append({"id": f"q{a}-{p}", "question": f"What does paragraph {p} of {title} say?",
                              "answers": [f"{a * p}", f"says {a * p}"], "is_impossible": False,
                              "passage_id": f"{title}#{p}"})  # fmt: skip
            questions.append({"id": f"u{a}-{p}", "question": f"What does paragraph {p} of {title} deny?",
                              "answers": [], "is_impossible": True, "passage_id": f"{title}#{p}"})  # fmt: skip
    write_jsonl(folder / "passages.jsonl", passages)
    write_jsonl(folder / "qa.jsonl", questions)


def test_every_set_has_its_role_and_the_roles_are_dev_or_test():
    sets = evaluation_sets()
    assert {name: s.role for name, s in sets.items()} == EXPECTED
    assert {s.role for s in sets.values()} <= set(ROLES)


def test_a_set_whose_files_are_absent_says_which_are_missing(checkout):
    sets = evaluation_sets()
    assert sets["blind-clinic"].unavailable() == (
        "tests/data/golden/blind-clinic/golden.jsonl, tests/data/golden/blind-clinic/docs not found"
    )
    assert "../shared/eval/doc2dial/golden-dev.jsonl" in sets["doc2dial-dev"].unavailable()
    assert "../shared/eval/squad2-dev-cs224n/passages.jsonl" in sets["squad-test"].unavailable()
    squad_files(checkout)
    assert sets["squad-test"].unavailable() is None  # generated: its sources are enough


def test_sets_are_chosen_by_name_and_role_and_an_unknown_name_is_refused():
    assert [s.name for s in sets_select(role=TEST)] == [n for n, role in EXPECTED.items() if role == TEST]
    assert [s.name for s in sets_select(["squad-test", "demo"])] == ["squad-test", "demo"]
    assert [s.name for s in sets_select(["squad-test", "demo"], role=DEV)] == ["demo"]
    with pytest.raises(ValueError, match="no evaluation set squad-train: choose among demo, "):
        sets_select(["squad-train"])


def test_squad_is_split_by_article_and_written_as_documents_and_golden_questions(checkout):
    squad_files(checkout)
    sets = evaluation_sets()
    splits = squad_split([f"Article {a}" for a in range(4)])
    assert sorted(splits.values()) == [DEV, DEV, TEST, TEST]
    for name, split in (("squad-dev", DEV), ("squad-test", TEST)):
        sets[name].prepare()
        docs = sorted(path.name for path in sets[name].corpus.iterdir())
        mine = sorted(title for title, role in splits.items() if role == split)
        assert docs == [f"{title.lower().replace(' ', '-')}--{p:03d}.md" for title in mine for p in range(3)]
        first = (sets[name].corpus / docs[0]).read_text()
        assert first.startswith(f"# {mine[0]}\n\nParagraph 0 of {mine[0]}")
        items = sets[name].items()
        assert len(items) == 12  # every question of the split (fewer than SQUAD_QUESTIONS)
        assert {item.docs[0] for item in items if item.answerable} <= set(docs)
        for item in items:
            if item.answerable:
                assert item.kind == "lookup" and item.must_include == (item.answer,) and item.answer.isdigit()
            else:
                assert item.kind == NEAR_MISS and not item.docs and not item.must_include
    # Built again: the same bytes, and a file that is not part of the split any more is removed.
    golden = sets["squad-dev"].golden.read_bytes()
    (sets["squad-dev"].corpus / "left-over.md").write_text("# Old\n\nold text\n")
    sets["squad-dev"].prepare()
    assert sets["squad-dev"].golden.read_bytes() == golden
    assert not (sets["squad-dev"].corpus / "left-over.md").exists()


def test_doc2dial_questions_the_agent_answered_with_a_question_are_their_own_kind(checkout):
    folder = checkout / "shared" / "eval" / "doc2dial"
    line = {"answerable": True, "doc": "a.md", "section": None, "answer": "x", "must_include": [], "kind": "answerable"}
    write_jsonl(
        folder / "golden-dev.jsonl", [{**line, "id": "d1", "question": "Q1?"}, {**line, "id": "d2", "question": "Q2?"}]
    )
    write_jsonl(folder / "golden-dev.agent-replies.jsonl", [
        {"id": "d1", "agent_reply": "Are you a veteran?", "agent_asked_back": True},
        {"id": "d2", "agent_reply": "Yes.", "agent_asked_back": False},
    ])  # fmt: skip
    (folder / "docs").mkdir()
    (folder / "docs" / "a.md").write_text("# A\n\ntext\n")
    evaluation_set = evaluation_sets()["doc2dial-dev"]
    assert evaluation_set.unavailable() is None
    assert [(item.id, item.kind) for item in evaluation_set.items()] == [("d1", ASKED_BACK), ("d2", "answerable")]
    assert [item.kind for item in golden_load(evaluation_set.golden)] == ["answerable", "answerable"]
