"""manage.py evaluate_retrieval on a tiny BEIR corpus written by the test, and the metrics it reports."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kb.evaluation import beir

pytestmark = pytest.mark.django_db
SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"

CORPUS = [
    {"_id": "d1", "title": "Train travel", "text": "Employees book train tickets through the travel desk."},
    {"_id": "d2", "title": "Expense claims", "text": "Receipts must be attached to every expense claim."},
    {"_id": "d3", "title": "Parental leave", "text": "Parents may take up to sixteen weeks of paid leave."},
    {"_id": "d4", "title": "Laptop security", "text": "Encrypt the disk of every laptop and lock the screen."},
    {"_id": "d5", "title": "Office parking", "text": "Parking badges are issued by the facilities team."},
    {"_id": "d6", "title": "", "text": "The canteen serves vegetarian lunch on Fridays."},
]
QUERIES = [
    {"_id": "q1", "text": "How do I book train tickets?"},
    {"_id": "q2", "text": "laptop disk encryption"},
    {"_id": "q3", "text": "paid leave for parents"},
    {"_id": "q4", "text": "a query nobody judged"},
]
QRELS = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td4\t1\r\nq3\td3\t2\r\nq3\td6\t0\r\n"


@pytest.fixture
def beir_files(tmp_path) -> dict[str, Path]:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in CORPUS))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(query) + "\n" for query in QUERIES))
    (tmp_path / "qrels").mkdir()
    qrels = tmp_path / "qrels" / "test.tsv"
    qrels.write_text(QRELS)
    yield {"corpus": corpus, "queries": queries, "qrels": qrels}
    beir.database_drop(beir.eval_database_name(beir.index_fingerprint(beir.file_sha256(corpus))))


def run(files: dict[str, Path], *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "evaluate_retrieval",
        "--corpus",
        str(files["corpus"]),
        "--queries",
        str(files["queries"]),
        "--qrels",
        str(files["qrels"]),
        *args,
        stdout=out,
        stderr=err,
    )
    return out.getvalue(), err.getvalue()


def test_it_builds_an_isolated_index_reports_every_mode_and_reuses_the_index(beir_files):
    from ingest.models import Document

    before = Document.objects.count()
    out, err = run(beir_files, "--mode", "all", "--json")
    result = json.loads(out)
    assert "embedded and indexed documents" in err
    assert result["queries"] == 3
    assert result["index"]["documents"] == 6 and result["index"]["added_now"] == 6
    assert result["index"]["database"].endswith(beir.index_fingerprint(result["corpus_sha256"]))
    assert set(result["modes"]) == {"hybrid", "bm25", "vector"}
    for mode, row in result["modes"].items():
        assert row["queries"] == 3
        assert row["recall@10"] == 1.0, mode  # six documents: every relevant one is in the top 10
        assert row["ndcg@10"] > 0.9, mode
        assert row["latency_ms"]["p95"] >= row["latency_ms"]["p50"] > 0
    # Users never see the evaluation corpus: the product's database did not change.
    assert Document.objects.count() == before

    out, err = run(beir_files, "--mode", "bm25", "--json")
    again = json.loads(out)
    assert "reusing the evaluation index" in err and "embedded" not in err
    assert again["index"]["added_now"] == 0 and again["index"]["documents"] == 6
    assert again["modes"]["bm25"]["ndcg@10"] == result["modes"]["bm25"]["ndcg@10"]


def test_it_prints_a_table_without_json_and_honours_limit_and_split(beir_files):
    out, _ = run(
        {**beir_files, "qrels": beir_files["qrels"].parent}, "--split", "test", "--mode", "vector", "--limit", "2"
    )
    assert out.startswith("2 queries on 6 documents")
    assert "nDCG@10" in out and "\nvector " in out


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("corpus", '{"title": "no id"}\n', "not a BEIR corpus line"),
        ("queries", "not json\n", "not a BEIR query line"),
        ("qrels", "query-id\tcorpus-id\tscore\nq1 d1\n", "not a BEIR qrels line"),
        ("qrels", "query-id\tcorpus-id\tscore\nq9\td1\t1\n", "has a judgement"),
    ],
)
def test_malformed_files_are_reported_with_the_line(beir_files, which, content, message):
    beir_files[which].write_text(content)
    with pytest.raises(CommandError, match=message):
        run(beir_files, "--json")


def test_a_missing_file_is_reported(beir_files, tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run({**beir_files, "qrels": tmp_path / "missing.tsv"})


def test_metrics_match_hand_computed_values():
    relevant = {"a": 1, "b": 1}
    ranking = ["x", "a", "y", "b"]
    assert beir.ndcg_at(ranking, relevant, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    )
    assert beir.recall_at(ranking, relevant, 2) == 0.5
    assert beir.recall_at(ranking, relevant, 10) == 1.0
    assert beir.mrr_at(ranking, relevant, 10) == 0.5
    assert beir.mrr_at(ranking, relevant, 1) == 0.0
    assert beir.ndcg_at(["a", "b"], relevant, 10) == 1.0
    assert beir.ndcg_at([], relevant, 10) == 0.0
    # Graded judgements: the more relevant document first is ideal.
    assert beir.ndcg_at(["g2", "g1"], {"g1": 1, "g2": 2}, 10) == 1.0
    assert beir.ndcg_at(["g1", "g2"], {"g1": 1, "g2": 2}, 10) < 1.0


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert beir.percentile(values, 0.5) == 50
    assert beir.percentile(values, 0.95) == 95
    assert beir.percentile([7.0], 0.95) == 7.0
    assert beir.percentile([], 0.95) == 0.0


def test_qrels_skip_the_header_and_non_relevant_pairs(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text(QRELS)
    assert beir.qrels_load(path) == {"q1": {"d1": 1}, "q2": {"d4": 1}, "q3": {"d3": 2}}


def test_the_scifact_files_are_in_the_expected_format():
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not at {SCIFACT} (the shared evaluation data); the quality bar is run by hand")
    queries = beir.queries_load(SCIFACT / "queries.jsonl")
    qrels = beir.qrels_load(SCIFACT / "qrels" / "test.tsv")
    assert len(qrels) == 300 and set(qrels) <= set(queries)
    assert sum(1 for _ in beir.corpus_load(SCIFACT / "corpus.jsonl")) == 5183


def test_an_isolated_index_works_on_its_own_database_even_with_a_connection_pool(db, settings):
    from django.db import connection

    from kb.evaluation import beir

    assert settings.DATABASES["default"]["OPTIONS"].get("pool"), "the product runs with a pool"
    name = "kb_eval_isolation_check"
    beir.database_ensure(name)
    try:
        with beir.default_database(name), connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone()[0] == name
    finally:
        beir.database_drop(name)
