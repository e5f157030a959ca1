"""Choose the off-limits topic guard's method and thresholds on the dev half of the topic set, report the test half.

    python -m kb.evaluation.calibrate_topics [--json var/bench/topics_calibration.json]

Data (tests/data/topics/questions.jsonl, written for kb): for 4 topics, on-topic questions and near misses that
mention the topic legitimately ("where is the pay review timetable?"), each with a `split` fixed before any tuning
by the rule: dev when the first byte of sha256(question) is even, else test. The topics' own examples and near-miss
examples are kb/guard/data/default_topics.json (none of them in the question set).

Chosen on dev only: among the methods (nearest example; topic centroid; a per-topic logistic regression,
kb/guard/topics.py, with C in 1, 3, 10, 30) and thresholds on a 0.01 grid: per method the highest threshold with
precision >= 0.9, recall >= 0.9 and <= 1% of the first half of tests/data/employee_questions.txt blocked; then the
method with the best dev F1. Reported on the test half and, as false positives, on ordinary employee questions (the
second half of tests/data/employee_questions.txt, the guard's held-out ordinary questions, the golden sets' questions;
blind-utility is counted, never read or printed).

Answers: an answer sentence is matched like a question; its threshold is the lowest at which no sentence of the demo
corpus nor of the blind-handbook/blind-clinic documents is flagged (ordinary answers), plus 0.02; recall is reported on
tests/data/topics/answers.jsonl (sentences drifting into a topic).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE = Path(__file__).resolve().parents[2]
QUESTIONS = BASE / "tests" / "data" / "topics" / "questions.jsonl"
ANSWERS = BASE / "tests" / "data" / "topics" / "answers.jsonl"
DEFAULTS = BASE / "kb" / "guard" / "data" / "default_topics.json"
BACKGROUND = BASE / "kb" / "guard" / "data" / "topic_background.txt"  # training negatives (a copy of the guard's
# ordinary dev questions): never a false-positive figure here
EMPLOYEE_QUESTIONS = BASE / "tests" / "data" / "employee_questions.txt"  # first half: dev; second half: reported
GOLDEN = BASE / "tests" / "data" / "golden"
MIN_PRECISION = 0.9  # the floors (precision 0.9, recall 0.85) with a margin on recall
MIN_RECALL = 0.9
MAX_ORDINARY_DEV_FP = 0.01
ANSWER_MARGIN_OF_SAFETY = 0.02


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    import django

    django.setup()


def embed(texts: list[str]) -> np.ndarray:
    from kb.search.embeddings import embed as model_embed
    from kb.text import normalise

    return model_embed([normalise(t) for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


def default_topics() -> list[dict]:
    return json.loads(DEFAULTS.read_text(encoding="utf-8"))["topics"]


@functools.cache
def _embedded(texts: tuple[str, ...]) -> np.ndarray:
    return embed(list(texts))


def topic_vectors(topics: list[dict]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    from kb.guard.topics import lines

    examples = [_embedded(tuple(lines("\n".join(t["examples"])))) for t in topics]
    negatives = _embedded(tuple(n for t in topics for n in lines("\n".join(t.get("negatives", [])))))
    background = _embedded(tuple(plain_lines(BACKGROUND)))
    return examples, negatives, background


def matcher(topics: list[dict], c: float):
    from kb.guard.topics import TopicMatcher, TopicSpec, train_weights

    examples, negatives, background = topic_vectors(topics)
    weights = train_weights(examples, negatives, background, c)
    return TopicMatcher(
        [
            TopicSpec(i, t["name"], t["response"], t["message"], t.get("contact", ""), w, b)
            for i, (t, (w, b)) in enumerate(zip(topics, weights, strict=True), start=1)
        ]
    )


def question_rows() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


def golden_questions(name: str) -> list[str]:
    path = GOLDEN / name / "golden.jsonl" if name != "demo" else GOLDEN / "demo.jsonl"
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plain_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Scored:
    topic: list[str | None]  # the best topic per text
    score: np.ndarray  # its score (probability, or cosine similarity for the baselines)


def similarity_scorer(topics: list[dict], kind: str):
    """Baselines: the nearest example's cosine similarity, or the topic centroid's."""
    examples, _, _ = topic_vectors(topics)
    if kind == "centroid":
        rows = [e.mean(axis=0) / np.linalg.norm(e.mean(axis=0)) for e in examples]
        owner = list(range(len(topics)))
    else:
        rows = [v for e in examples for v in e]
        owner = [i for i, e in enumerate(examples) for _ in e]
    matrix = np.stack(rows)

    def scorer(vectors: np.ndarray) -> Scored:
        similarity = vectors @ matrix.T
        best = similarity.argmax(axis=1)
        return Scored([topics[owner[int(j)]]["name"] for j in best], similarity.max(axis=1))

    return scorer


def classifier_scorer(topics: list[dict], c: float):
    built = matcher(topics, c)

    def scorer(vectors: np.ndarray) -> Scored:
        matches = built.match_many(vectors)
        return Scored([m.topic.name if m.topic else None for m in matches], np.array([m.probability for m in matches]))

    return scorer


def figures(rows: list[dict], scored: Scored, threshold: float) -> dict:
    flagged = scored.score >= threshold
    on = [r["label"] == "on_topic" for r in rows]
    right = [bool(f) and o and t == r["topic"] for f, o, t, r in zip(flagged, on, scored.topic, rows, strict=True)]
    blocked = int(flagged.sum())
    positives = sum(on)
    per_topic = {}
    for name in sorted({r["topic"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["topic"] == name]
        t_on = [i for i in idx if on[i]]
        t_blocked = [i for i, t in enumerate(scored.topic) if flagged[i] and t == name]
        per_topic[name] = {
            "on_topic": len(t_on),
            "near_miss": len(idx) - len(t_on),
            "recall": round(sum(right[i] for i in t_on) / len(t_on), 3) if t_on else None,
            "near_misses_blocked": sum(1 for i in idx if flagged[i] and not on[i]),
            "precision": round(sum(right[i] for i in t_blocked) / len(t_blocked), 3) if t_blocked else None,
        }
    return {
        "n": len(rows),
        "on_topic": positives,
        "near_miss": len(rows) - positives,
        "blocked": blocked,
        "precision": round(sum(right) / blocked, 4) if blocked else 1.0,
        "recall": round(sum(right) / positives, 4) if positives else None,
        "near_miss_blocked": int(sum(1 for f, o in zip(flagged, on, strict=True) if f and not o)),
        "per_topic": per_topic,
    }


def false_positive_rate(scored: Scored, threshold: float) -> dict:
    flagged = scored.score >= threshold
    n = len(flagged)
    return {"n": n, "blocked": int(flagged.sum()), "rate": round(float(flagged.sum()) / n, 4) if n else None}


def _classifier(c: float):
    return lambda topics: classifier_scorer(topics, c)


METHODS: dict = {
    "nearest_example": lambda topics: similarity_scorer(topics, "nearest"),
    "centroid": lambda topics: similarity_scorer(topics, "centroid"),
    **{f"classifier_c{c:g}": _classifier(c) for c in (1.0, 3.0, 10.0, 30.0)},
}


def choose(topics: list[dict], dev: list[dict], dev_vectors: np.ndarray, ordinary_vectors: np.ndarray) -> dict:
    """The best method and threshold on dev (the rule: the module's docstring)."""
    best: dict[str, tuple] = {}
    for method, make in METHODS.items():
        scorer = make(topics)
        scored, ordinary = scorer(dev_vectors), scorer(ordinary_vectors)
        for threshold in [round(x, 2) for x in np.arange(0.30, 1.0, 0.01)]:
            result = figures(dev, scored, threshold)
            fp = false_positive_rate(ordinary, threshold)
            p, r = result["precision"], result["recall"] or 0.0
            if p < MIN_PRECISION or r < MIN_RECALL or fp["rate"] > MAX_ORDINARY_DEV_FP:
                continue
            # Per method its highest such threshold (fewest ordinary questions blocked); between methods, dev F1.
            if method not in best or threshold > best[method][1]:
                best[method] = (None, threshold, result, fp)
    if not best:
        raise SystemExit("no setting reaches the precision and false-positive floor on dev")

    def f1(item) -> float:
        p, r = item[1][2]["precision"], item[1][2]["recall"]
        return 2 * p * r / (p + r)

    method, (_, threshold, result, fp) = max(best.items(), key=f1)
    return {
        "method": method,
        "threshold": threshold,
        "dev": result,
        "ordinary_dev": fp,
        "best_per_method_on_dev": {
            m: {"threshold": t, "recall": r["recall"], "precision": r["precision"], "ordinary_dev_fp": f["rate"]}
            for m, (_, t, r, f) in best.items()
        },
    }


def answer_sentences_of(folder: Path) -> list[str]:
    from kb.text import split_sentences

    sentences = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in (".md", ".txt") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for start, end in split_sentences(text):
            sentence = " ".join(text[start:end].split()).strip("#*-> ")
            if len(sentence.split()) >= 4:
                sentences.append(sentence)
    return sentences


def calibrate_answers(scorer) -> dict:
    """The answer-sentence threshold: just above the highest ordinary document sentence."""
    ordinary = []
    for folder in (BASE / "ingest" / "demo", GOLDEN / "blind-handbook" / "docs", GOLDEN / "blind-clinic" / "docs"):
        if folder.exists():
            ordinary += answer_sentences_of(folder)
    scored = scorer(embed(ordinary))
    top = float(scored.score.max()) if len(ordinary) else 0.0
    threshold = min(0.99, round(top + ANSWER_MARGIN_OF_SAFETY, 2))
    report: dict = {"ordinary_sentences": len(ordinary), "highest_ordinary": round(top, 4), "threshold": threshold}
    if ANSWERS.exists():
        rows = [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").splitlines() if line.strip()]
        drifting = scorer(embed([r["sentence"] for r in rows]))
        hit = [s >= threshold and t == r["topic"] for s, t, r in zip(drifting.score, drifting.topic, rows, strict=True)]
        report["drifting_sentences"] = {"n": len(rows), "recall": round(sum(hit) / len(rows), 3)}
    return report


def run() -> dict:
    topics = default_topics()
    rows = question_rows()
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    employees = plain_lines(EMPLOYEE_QUESTIONS)
    half = len(employees) // 2
    chosen = choose(topics, dev, embed([r["question"] for r in dev]), embed(employees[:half]))
    scorer = METHODS[chosen["method"]](topics)
    threshold = chosen["threshold"]
    report = {
        "rule": f"per method the highest threshold with dev precision >= {MIN_PRECISION}, recall >= {MIN_RECALL} and "
        f"<= {MAX_ORDINARY_DEV_FP:.0%} of the first half of employee_questions.txt blocked, then the method with the "
        "best dev F1 there; split fixed by sha256(question)[0] parity",
        **chosen,
        "test": figures(test, scorer(embed([r["question"] for r in test])), threshold),
        "ordinary_false_positives": {},
    }
    ordinary_sets = {
        "employee_questions_second_half": employees[half:],
        "ordinary_questions_test": plain_lines(BASE / "tests" / "data" / "guard" / "ordinary_questions_test.txt"),
        "golden_demo": golden_questions("demo"),
        "golden_blind_handbook": golden_questions("blind-handbook"),
        "golden_blind_clinic": golden_questions("blind-clinic"),
        # Held out: counted, never read, printed or tuned on.
        "golden_blind_utility": golden_questions("blind-utility"),
    }
    for name, questions in ordinary_sets.items():
        scored = scorer(embed(questions))
        report["ordinary_false_positives"][name] = false_positive_rate(scored, threshold)
        if name != "golden_blind_utility":
            report["ordinary_false_positives"][name]["blocked_questions"] = [
                [q, t] for q, s, t in zip(questions, scored.score, scored.topic, strict=True) if s >= threshold
            ][:10]
    report["answers"] = calibrate_answers(scorer)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=BASE / "var" / "bench" / "topics_calibration.json")
    args = parser.parse_args(argv)
    _setup_django()
    report = run()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
