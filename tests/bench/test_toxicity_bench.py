"""What the toxicity guards add to the ask path (results in var/bench/toxicity.json).

1. The input guard on a question whose embedding the ask path has already computed (as in the pipeline, where
   the injection guard computed it first): p50/p95 over the employee questions.
2. The answer guard on ordinary answers (demo-corpus passages cut into three-sentence answers with markers):
   p50/p95; only sentences with a gate word or a rule hit are embedded, so this is mostly a word lookup.
3. The answer guard on an answer with one toxic sentence (it is embedded and scored): p50/p95.
The issue's budget: <= 5 ms p95 for the toxicity and topic guards together on an ordinary question and answer.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from django.conf import settings

from kb.evaluation import beir, train_injection, train_toxicity
from kb.guard.input import InputContext, ToxicityGuard
from kb.guard.output import OutputContext, ToxicityOutputGuard

pytestmark = [pytest.mark.bench]

OUT = Path(settings.BASE_DIR) / "var" / "bench" / "toxicity.json"
TARGET_P95_MS = 5.0


def _stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(beir.percentile(values, 0.95), 3),
    }


def _answer_context(answer: str) -> OutputContext:
    return OutputContext(
        answer=answer, question="q", sources={}, system_prompt="", cited=[], invalid=[], refused=False, model="m"
    )


@pytest.mark.timeout(900)
def test_the_toxicity_guards_add_little_to_the_ask_path():
    from kb.search import embeddings

    embeddings.use_threads(settings.KB_WEB_TORCH_THREADS)  # as in the web process
    first, second = train_injection.employee_questions()
    questions = first + second
    vectors = embeddings.embed(questions)
    guard = ToxicityGuard()
    input_ms = []
    for question, vector in zip(questions, vectors, strict=True):
        context = InputContext(user=None, text=question, typed_vector=vector)  # embedded as typed
        started = time.perf_counter()
        guard.scan(context)
        input_ms.append((time.perf_counter() - started) * 1000)

    sentences = [s for chunk in train_injection.demo_chunks() for s in train_toxicity.sentences(chunk)]
    answers = [
        " ".join(f"{s.rstrip('.')} [{n + 1}]." for n, s in enumerate(sentences[i : i + 3]))
        for i in range(0, len(sentences) - 2, 3)
    ]
    output = ToxicityOutputGuard()
    ordinary_ms = []
    for answer in answers:
        started = time.perf_counter()
        output.scan(_answer_context(answer))
        ordinary_ms.append((time.perf_counter() - started) * 1000)
    toxic_ms = []
    for answer in answers[:50]:
        context = _answer_context(answer + " You stupid bitch, read it yourself.")
        started = time.perf_counter()
        verdict = output.scan(context)
        toxic_ms.append((time.perf_counter() - started) * 1000)
        assert verdict.action == "mask"

    report = {
        "input_guard_given_vector": _stats(input_ms),
        "answer_guard_ordinary_answers": _stats(ordinary_ms),
        "answer_guard_one_toxic_sentence": _stats(toxic_ms),
        "target_p95_ms": TARGET_P95_MS,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    total = report["input_guard_given_vector"]["p95_ms"] + report["answer_guard_ordinary_answers"]["p95_ms"]
    assert total <= TARGET_P95_MS, report
