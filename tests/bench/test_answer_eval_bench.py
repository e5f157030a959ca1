"""Answer evaluation on SciFact (issue #8): `manage.py evaluate_answers` on a golden set derived at run time from
the SciFact claims in ../shared/eval/scifact (CC BY-NC: read in place, never copied into the repository).

- corpus: the 5,183 abstracts of `corpus.jsonl`, in the same isolated index that `evaluate_retrieval` and
  the gate calibration build (one database per corpus fingerprint, kept and reused between runs);
- questions: SAMPLE claims drawn with a fixed seed from `claims/claims_{dev,train}.jsonl`, each asked as
  written (as the gate calibration asks them);
  - a claim with evidence is answerable: its evidence abstracts are the expected documents, its kind is the
    label of its first evidence (`support` or `contradict`), and `must_include` holds the sentences of the
    first rationale set of its first evidence abstract (from `claims/corpus_sentences.jsonl`), so the
    must-include recall is the share of gold rationale sentences the answer quotes (a lower bound: other
    rationale sets support the claim as well);
  - a NOT-ENOUGH-INFO claim (no evidence; its cited abstracts are in the corpus, same topic) is unanswerable,
    kind `nei`;
- configuration: the product prompt and the offline extractive provider (no model, no cost).

Results: var/bench/answer_eval_scifact.json (the command's JSON report) and answer_eval_scifact.html. The test
fails when a metric falls below its floor (set a little below the measured figures, noted with them).
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from kb.evaluation.answers import metrics

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

SCIFACT = Path(settings.BASE_DIR).parent / "shared" / "eval" / "scifact"
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "answer_eval_scifact.json"
HTML = OUT.with_suffix(".html")
SAMPLE = 300
SEED = 20261124

# Measured (300 claims: 115 support, 69 contradict, 116 NOT-ENOUGH-INFO; extractive; 2 cores): hit@1 0.739,
# hit@8 0.935, citation precision 0.655, must-include recall 0.470, complete answers 0.489, refusal precision
# 0.667, refusal recall 0.103, false refusals 0.033 (README "Evaluation").
FLOORS = {
    "hit_at_1": 0.70,
    "hit_at_k": 0.90,
    "citation_precision": 0.61,
    "must_include_recall": 0.43,
    "complete_answer_rate": 0.45,
    "refusal_precision": 0.60,
    "refusal_recall": 0.08,
}
CEILINGS = {"false_refusal_rate": 0.05}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scifact_golden(path: Path) -> dict[str, int]:
    """Write the sampled golden set to `path`; the number of questions per kind."""
    claims = _jsonl(SCIFACT / "claims" / "claims_dev.jsonl") + _jsonl(SCIFACT / "claims" / "claims_train.jsonl")
    sentences = {str(doc["doc_id"]): doc["abstract"] for doc in _jsonl(SCIFACT / "claims" / "corpus_sentences.jsonl")}
    sample = random.Random(SEED).sample(sorted(claims, key=lambda claim: claim["id"]), SAMPLE)
    kinds: dict[str, int] = {}
    with path.open("w", encoding="utf-8") as handle:
        for claim in sample:
            evidence = claim["evidence"]
            docs = sorted(evidence, key=int)
            if docs:
                first = evidence[docs[0]][0]
                kind = first["label"].lower()
                facts = [" ".join(sentences[docs[0]][i].split()) for i in first["sentences"]]
                answer = f"{first['label']} (abstract {docs[0]}, rationale sentences {first['sentences']})"
            else:
                kind, facts, answer = "nei", [], "Not enough information in the corpus."
            kinds[kind] = kinds.get(kind, 0) + 1
            row = {
                "id": f"scifact-{claim['id']}",
                "question": claim["claim"],
                "answerable": bool(docs),
                "doc": docs or None,
                "section": None,
                "answer": answer,
                "must_include": facts,
                "kind": kind,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return kinds


@pytest.mark.timeout(3600)
def test_answer_evaluation_on_scifact_claims(tmp_path, capsys):
    claims = SCIFACT / "claims"
    needed = [
        SCIFACT / "corpus.jsonl",
        *(claims / f"{name}.jsonl" for name in ("claims_dev", "claims_train", "corpus_sentences")),
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: this benchmark reads SciFact from ../shared/eval")

    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[answer-eval] {message}", flush=True)

    golden = tmp_path / "scifact.jsonl"
    kinds = scifact_golden(golden)
    log(f"{SAMPLE} claims (seed {SEED}): {kinds}; the first run embeds the corpus (minutes), later runs reuse it")
    started = time.perf_counter()
    err = io.StringIO()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    call_command(
        "evaluate_answers",
        "--golden", str(golden), "--corpus", str(SCIFACT / "corpus.jsonl"), "--models", "extractive",
        "--prompt", "answer-v1", "--output", str(OUT), "--html", str(HTML),
        stdout=io.StringIO(), stderr=err,
    )  # fmt: skip
    report = json.loads(OUT.read_text())
    (config,) = report["configs"]
    result = config["metrics"]
    shown = [name for name in (*metrics.QUALITY_METRICS, *metrics.COST_RATES) if name in result]
    log(f"index {report['corpus']['index']}, {time.perf_counter() - started:.0f} s")
    log("overall: " + ", ".join(f"{name} {result[name]}" for name in shown))
    for kind, values in config["per_kind"].items():
        log(f"{kind}: " + ", ".join(f"{name} {values[name]}" for name in shown if values[name] is not None))
    log(f"latency p50 {result['latency_ms_p50']} ms, p95 {result['latency_ms_p95']} ms; results in {OUT}, {HTML}")

    assert result["questions"] == SAMPLE and result["fallback_rate"] == 0
    assert metrics.threshold_failures(result, floors=FLOORS, ceilings=CEILINGS) == []
