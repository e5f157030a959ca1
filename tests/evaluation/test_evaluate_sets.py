"""manage.py evaluate_sets on the demo set (a few questions), and follow-up questions asked in their
conversation by the answer evaluation, on the demo corpus's isolated index (built once, reused)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from kb.evaluation.answers import metrics

pytestmark = pytest.mark.django_db

DEMO = Path(settings.BASE_DIR) / "ingest" / "demo"
LIMIT = 4


def test_evaluate_sets_writes_the_sets_side_by_side_with_each_sets_own_report(tmp_path):
    output = tmp_path / "bench" / "answer_sets.json"
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "evaluate_sets", "--sets", "demo", "--limit", str(LIMIT), "--output", str(output), "--json",
        stdout=out, stderr=err,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert json.loads(out.getvalue()) == report
    assert report["config"]["models"] == ["extractive"] and report["limit"] == LIMIT
    assert report["rows"] == list(metrics.SET_ROWS) and list(report["sets"]) == ["demo"]
    demo = report["sets"]["demo"]
    assert demo["role"] == "dev" and demo["metrics"]["questions"] == LIMIT
    # The first questions of the demo set are answerable, with facts: every figure of the row is measured.
    for row in ("false_refusal_rate", "must_include_recall", "context_recall", "answer_f1", "hit_at_k"):
        assert demo["metrics"][row] is not None, row
    assert demo["metrics"]["context_recall"] >= demo["metrics"]["must_include_recall"]
    assert demo["corpus"]["documents"] == 5 and demo["runtime_s"] > 0
    full = json.loads(Path(demo["report"]).read_text())
    assert full["set"] == {"name": "demo", "role": "dev"} and len(full["configs"][0]["questions"]) == LIMIT
    assert Path(demo["report"]).with_suffix(".html").is_file()
    page = Path(report["html"]).read_text()
    assert page.startswith("<!doctype html>") and "context_recall" in page and "<script" not in page


def test_evaluate_sets_refuses_a_role_that_no_named_set_has_and_an_unknown_set():
    with pytest.raises(CommandError, match="no set named has the role test"):
        call_command("evaluate_sets", "--sets", "demo", "--role", "test", stdout=io.StringIO())
    with pytest.raises(CommandError, match="no evaluation set handbook: choose among demo"):
        call_command("evaluate_sets", "--sets", "handbook", stdout=io.StringIO())


def test_follow_up_questions_are_asked_after_their_conversation(tmp_path):
    line = {"answerable": True, "doc": "offices-and-facilities.html", "section": None, "answer": "07:30 to 19:00.",
            "must_include": ["07:30 to 19:00"], "kind": "follow-up"}  # fmt: skip
    first = "What is the address of the Amsterdam office?"
    rows = [
        {**line, "id": "a", "question": first, "answer": "Keizersgracht 120.", "must_include": ["Keizersgracht 120"]},
        {**line, "id": "b", "question": "And what are its opening hours?", "follows": "a"},
        {**line, "id": "c", "question": "What about its opening hours?",
         "context": [{"role": "user", "text": first}, {"role": "agent", "text": "Keizersgracht 120."}]},
    ]  # fmt: skip
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(row) + "\n" for row in rows))
    call_command(
        "evaluate_answers", "--golden", str(golden), "--corpus", str(DEMO), "--models", "extractive",
        "--output", str(tmp_path / "report.json"), "--no-html", stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    a, b, c = json.loads((tmp_path / "report.json").read_text())["configs"][0]["questions"]
    assert a["outcome"] == "answered" and "hours" not in a["search_query"]
    # b continues a's conversation, c one set up with its earlier turns; both search with them.
    assert b["conversation_id"] == a["conversation_id"] and b["follows"] == "a"
    assert c["conversation_id"] not in (None, a["conversation_id"]) and c["context_turns"] == 2
    for follow_up in (b, c):
        query = follow_up["search_query"].casefold()  # as retrieval normalised it
        assert "amsterdam" in query and "hours" in query, query
        assert follow_up["context_facts"]["found"] == ["07:30 to 19:00"]


def test_a_corpus_folder_takes_every_format_kb_reads(tmp_path):
    from kb.evaluation.answers.corpus import corpus_source

    for name in ("policy.md", "contacts.csv", "rates.xlsx", "deck.pptx", "mail.eml", "scan.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "script.py").write_text("print()")
    (tmp_path / ".hidden.md").write_text("# no")
    files = corpus_source(tmp_path).files
    assert set(files) == {"policy.md", "contacts.csv", "rates.xlsx", "deck.pptx", "mail.eml", "scan.png", "notes.txt"}
