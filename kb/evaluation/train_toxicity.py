"""Train the toxic-content classifier and choose its two thresholds.

Run as `python -m kb.evaluation.train_toxicity [--eval-dir DIR] [--output F] [--no-cache] [--measure WEIGHTS]`.
It reads ../shared/eval (never copied into the repo) and writes kb/guard/data/toxicity_model.json: 384 weights, an
intercept and a metadata record (sources and sizes, embedding model, thresholds and how they were chosen, held-out
figures, checksums of the files read) that tests/guard/test_toxicity.py re-checks. Offline tooling: the runtime
guard (kb.guard.toxicity) only loads the file. It reuses the injection trainer's pieces (embedding cache, Newton
logistic regression, threshold rule, SQuAD and doc2dial readers) rather than copying them.

Why these choices:
- Toxic = Davidson's "hatespeech" or "offensive" (its `toxic` field). The offensive class is mostly slurs and
  sexual insults aimed at people, which is what an abusive question or a toxic answer sentence looks like; hate
  speech alone is 1,135 training tweets, too few to learn from. Davidson's own split is kept: train is fitted,
  val places the thresholds (below), test is only measured (recall and precision at the chosen thresholds).
- Tweets are cleaned before embedding (HTML entities, "RT", @mentions, links, hashtags' "#"): those are Twitter
  markers, and the classifier must not learn "looks like a tweet" as "toxic".
- Davidson's "neither" tweets are not what employees ask, so ordinary questions and passages are fitted too: the
  first half of the employee questions, SQuAD questions and passages (articles held out by the injection
  trainer's rule) and doc2dial dev dialogues (60% of them; the rest choose the threshold).
- The penalty and the weight of the employee/doc2dial questions are chosen by 5-fold cross-validation on the
  training rows (Davidson toxic recall at the threshold that flags <= 1% of each kind of ordinary question).
- Thresholds are never chosen on the toxic tweets whose recall they report (Davidson test). Each has a floor set
  by held-out ordinary texts and is placed at or above it where recall minus false-positive rate is highest on
  Davidson's val split (not fitted): the floor alone (lowest within budget) flagged 26% of held-out 'neither'
  tweets and 2.3% of doc2dial's test turns. Floors:
  questions, the lowest threshold flagging <= 1% of each of the employee questions' second half, the guard's dev
  questions (tests/data/guard/ordinary_questions_dev.txt) and doc2dial's held-out dev dialogues (rules included);
  answer sentences, the lowest flagging no sentence of the demo corpus and <= 1% of held-out SQuAD passage
  sentences. The guard's test questions, doc2dial's test documents and the demo golden questions are reported.
- Mild profanity ("my damn laptop won't boot") in a work question is not abuse; the 1% budget on ordinary
  questions is the binding constraint, and recall is what is left at it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kb.evaluation.train_injection import (
    DEFAULT_EVAL_DIR,
    DEMO_GOLDEN,
    ORDINARY_DEV,
    ORDINARY_TEST,
    SEED,
    Example,
    Scored,
    Sets,
    _by_hash,
    _doc2dial,
    _hash_unit,
    _jsonl,
    _lines,
    _Reader,
    _squad,
    _unique,
    choose_threshold,
    demo_chunks,
    embed_texts,
    employee_questions,
    fit_logistic,
    paraphrase_questions,
    sizes_by_source,
)
from kb.guard.injection import InjectionModel
from kb.guard.toxicity import _WORD, MODEL_PATH, candidate_sentence, first_rule
from kb.text import fold, split_sentences

QUESTION_FPR_BUDGET = 0.01
SENTENCE_FPR_BUDGET = 0.01
REGULARISATION_GRID = (1e-4, 1e-3)
ORDINARY_WEIGHT_GRID = (4.0, 16.0)
# Davidson's "neither" tweets x this weight: without it the regression learns "a tweet" rather than "abuse" (a
# first run flagged 78% of the held-out neither tweets at 99.7% recall).
NEITHER_WEIGHT_GRID = (1.0, 4.0, 16.0)
CV_FOLDS = 5
# Sources of ordinary questions whose weight `ordinary_weight` multiplies (the texts the guard really sees).
CONVERSATIONAL_SOURCES = ("employee", "doc2dial")
QUESTION_NEGATIVE_POOL = ("employee", "ordinary_dev", "doc2dial_dev")
REPORTED_QUESTION_SETS = ("ordinary_test", "employee_other_author", "doc2dial_test", "demo_golden", "squad")
DAVIDSON = "toxicity/davidson/labeled.jsonl"
OUTPUT = MODEL_PATH

_MENTION = re.compile(r"@\w+:?")
_LINK = re.compile(r"https?://\S+|www\.\S+")
_RT = re.compile(r"\bRT\b:?")


def clean_tweet(text: str) -> str:
    """A tweet without Twitter's markers: HTML entities decoded, RT, @mentions, links and '#' removed."""
    text = html.unescape(html.unescape(text))
    text = _LINK.sub(" ", _MENTION.sub(" ", _RT.sub(" ", text))).replace("#", "")
    return re.sub(r"\s+", " ", text).strip(" !:\"'")


def davidson(reader: _Reader) -> dict[str, list[Example]]:
    """Davidson's tweets by its own split (train / val / test), cleaned, labelled 1 when hate speech or offensive."""
    by_split: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for row in reader.jsonl(DAVIDSON):
        text = clean_tweet(row["text"])
        if len(text) < 3 or text in seen:
            continue
        seen.add(text)
        source = "davidson_toxic" if row["toxic"] else "davidson_neither"
        by_split[row["split"]].append(Example(text, int(row["toxic"]), source))
    return by_split


def sentences(text: str) -> list[str]:
    """The sentences of a passage with at least four words (as the output guard scores an answer)."""
    pieces = [text[start:end].strip() for start, end in split_sentences(text)]
    return [piece for piece in pieces if len(piece.split()) >= 4]


def load_sets(eval_dir: Path = DEFAULT_EVAL_DIR) -> tuple[Sets, dict[str, list[Example]]]:
    """Training rows and held-out question / sentence sets; and Davidson's splits."""
    reader = _Reader(eval_dir)
    sets = Sets()
    tweets = davidson(reader)
    sets.train += tweets["train"]
    sets.questions["davidson_test"] = tweets["test"]
    first, second = employee_questions()
    sets.train += [Example(text, 0, "employee") for text in first]
    sets.questions["employee"] = [Example(text, 0, "employee") for text in second]
    sets.questions["ordinary_dev"] = [Example(text, 0, "ordinary_dev") for text in _lines(ORDINARY_DEV)]
    sets.questions["ordinary_test"] = [Example(text, 0, "ordinary_test") for text in _lines(ORDINARY_TEST)]
    sets.questions["employee_other_author"] = [
        Example(text, 0, "employee_other_author") for text in paraphrase_questions()
    ]
    _squad(reader, sets)
    _doc2dial(reader, sets)
    rows = reader.jsonl("doc2dial/golden-test.jsonl") + reader.jsonl("doc2dial/followup-test.jsonl")
    sets.questions["doc2dial_test"] = [Example(t, 0, "doc2dial_test") for t in _unique(r["question"] for r in rows)]
    sets.questions["demo_golden"] = [Example(row["question"], 0, "demo_golden") for row in _jsonl(DEMO_GOLDEN)]
    # Answer sentences: the demo corpus's (our own policy prose) and held-out SQuAD passages', one sentence each.
    squad_passages = sets.documents.pop("squad_passages")
    sets.documents = {
        "demo_sentences": [
            Example(s, 0, "demo_sentences") for s in _unique(x for c in demo_chunks() for x in sentences(c))
        ],
        "squad_sentences": [
            Example(s, 0, "squad_sentences") for s in _unique(x for p in squad_passages for x in sentences(p.text))
        ],
        "davidson_test": tweets["test"],
    }
    sets.files = dict(sorted(reader.files.items()))
    return sets, tweets


def source_weights(examples: Sequence[Example], ordinary_weight: float, neither_weight: float = 1.0) -> np.ndarray:
    """Classes weigh the same; within the ordinary class each source weighs the same, then the conversational
    ones x `ordinary_weight` and Davidson's 'neither' tweets x `neither_weight`."""
    counts: dict[tuple[int, str], int] = {}
    for example in examples:
        counts[example.label, example.source] = counts.get((example.label, example.source), 0) + 1
    per_class = {label: sum(1 for key in counts if key[0] == label) for label in (0, 1)}
    weights = np.array([1.0 / (counts[e.label, e.source] * per_class[e.label]) for e in examples])
    factor = {source: ordinary_weight for source in CONVERSATIONAL_SOURCES} | {"davidson_neither": neither_weight}
    return weights * np.array([factor.get(e.source, 1.0) for e in examples])


def fit(
    x: np.ndarray, y: np.ndarray, examples: Sequence[Example], l2: float, weight: float, neither: float
) -> InjectionModel:
    coef, intercept = fit_logistic(x, y, source_weights(examples, weight, neither), l2)
    return InjectionModel(coef=coef, intercept=intercept, metadata={})


def _scored(examples: Sequence[Example], probabilities: np.ndarray) -> list[Scored]:
    return [Scored(e.label, float(p), first_rule(e.text)) for e, p in zip(examples, probabilities, strict=True)]


def select(x: np.ndarray, y: np.ndarray, examples: Sequence[Example]) -> tuple[tuple[float, float, float], list]:
    """(l2, ordinary weight, neither weight) with the best out-of-fold Davidson toxic recall minus Davidson
    'neither' false-positive rate, at the threshold flagging <= 1% of each ordinary question source (employee,
    SQuAD, doc2dial); folds by a hash of the text."""
    fold = np.array([int(_hash_unit(f"tox-cv:{e.text}") * CV_FOLDS) for e in examples])
    grid = []
    for neither in NEITHER_WEIGHT_GRID:
        for weight in ORDINARY_WEIGHT_GRID:
            for l2 in REGULARISATION_GRID:
                oof = np.zeros(len(examples))
                for k in range(CV_FOLDS):
                    train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                    model = fit(x[train], y[train], [examples[int(i)] for i in train], l2, weight, neither)
                    oof[test] = model.probabilities(x[test])
                by_source: dict[str, list[Scored]] = {}
                for example, item in zip(examples, _scored(examples, oof), strict=True):
                    by_source.setdefault(example.source, []).append(item)
                threshold = choose_threshold(
                    [(by_source[s], QUESTION_FPR_BUDGET) for s in ("employee", "squad", "doc2dial")]
                )

                recall, neither_fpr = (
                    float(np.mean([item.rule is not None or item.score >= threshold for item in by_source[source]]))
                    for source in ("davidson_toxic", "davidson_neither")
                )
                grid.append(
                    {
                        "l2": l2,
                        "ordinary_weight": weight,
                        "neither_weight": neither,
                        "threshold": threshold,
                        "recall": round(recall, 4),
                        "neither_fpr": round(neither_fpr, 4),
                        "objective": round(recall - neither_fpr, 4),
                    }
                )
                print(f"  cv {grid[-1]}", file=sys.stderr)
    best = max(grid, key=lambda row: row["objective"])
    return (best["l2"], best["ordinary_weight"], best["neither_weight"]), grid


def balanced_threshold(validation: list[Scored], floor: float) -> float:
    """The threshold (to 3 decimals, not below `floor`) maximising recall minus false-positive rate on Davidson's
    validation split: never fitted and not the reported test split. The ordinary-question rule alone gives the
    lowest threshold within budget, which on the held-out tweets flagged a quarter of the 'neither' ones and on
    doc2dial's test turns 2.3% ("hg", "yes, who doesn't")."""
    positives = np.array([item.score for item in validation if item.label])
    negatives = np.array([item.score for item in validation if not item.label])
    candidates = np.round(np.arange(max(floor, 0.001), 1.0, 0.001), 3)
    value = [float((positives >= c).mean() - (negatives >= c).mean()) for c in candidates]
    return float(candidates[int(np.argmax(value))])


def score_sets(groups: dict[str, list[Example]], model: InjectionModel, cache: Path | None) -> dict[str, list[Scored]]:
    texts = [e.text for examples in groups.values() for e in examples]
    probabilities = model.probabilities(embed_texts(texts, cache)) if texts else np.array([])
    out: dict[str, list[Scored]] = {}
    i = 0
    for source, examples in groups.items():
        out[source] = _scored(examples, probabilities[i : i + len(examples)])
        i += len(examples)
    return out


def figures(scored: dict[str, list[Scored]], threshold: float) -> dict[str, dict[str, Any]]:
    """Per set: recall and precision on toxic texts (where there are any) and the false-positive rate."""
    out: dict[str, dict[str, Any]] = {}
    for source, items in scored.items():
        flagged = [item.rule is not None or item.score >= threshold for item in items]
        positives = sum(item.label for item in items)
        negatives = len(items) - positives
        caught = sum(f for f, item in zip(flagged, items, strict=True) if item.label)
        false = sum(f for f, item in zip(flagged, items, strict=True) if not item.label)
        row: dict[str, Any] = {"n": len(items)}
        if positives:
            row.update(
                positives=positives,
                caught=caught,
                recall=round(caught / positives, 4),
                precision=round(caught / max(1, caught + false), 4),
            )
        if negatives:
            row.update(negatives=negatives, flagged=false, fpr=round(false / negatives, 4))
        out[source] = row
    return out


def _table(title: str, rows: dict[str, dict[str, Any]], threshold: float) -> str:
    lines = [f"{title} (threshold {threshold})", f"  {'set':<18} {'n':>5} {'recall':>20} {'precision':>9} {'FP':>16}"]
    for source, row in rows.items():
        recall = f"{row['recall']:.1%} ({row['caught']}/{row['positives']})" if "recall" in row else "-"
        precision = f"{row['precision']:.1%}" if "precision" in row else "-"
        fpr = f"{row['fpr']:.1%} ({row['flagged']}/{row['negatives']})" if "fpr" in row else "-"
        lines.append(f"  {source:<18} {row['n']:>5} {recall:>20} {precision:>9} {fpr:>16}")
    return "\n".join(lines)


# Answer gate: a word is on the list when at least this many toxic training tweets use it, at least this share of
# the Davidson training tweets using it are toxic (the base rate is 83%), and no ordinary training text uses it.
GATE_MIN_COUNT = 5
GATE_MIN_SHARE = 0.95


def gate_words(examples: Sequence[Example]) -> frozenset[str]:
    """The words that almost only toxic training tweets use (see GATE_MIN_COUNT, GATE_MIN_SHARE)."""
    toxic: dict[str, int] = {}
    total: dict[str, int] = {}
    ordinary: set[str] = set()
    for e in examples:
        words = set(_WORD.findall(fold(e.text).lower()))
        if not e.source.startswith("davidson"):
            ordinary |= words
            continue
        for word in words:
            total[word] = total.get(word, 0) + 1
            toxic[word] = toxic.get(word, 0) + e.label
    return frozenset(
        w for w, n in toxic.items() if n >= GATE_MIN_COUNT and n / total[w] >= GATE_MIN_SHARE and w not in ordinary
    )


def gated(groups: dict[str, list[Example]], scored: dict[str, list[Scored]], words: frozenset[str]):
    """Scores as the answer guard sees them: a sentence without a gate word or rule hit is never scored (0)."""
    return {
        source: [
            item if candidate_sentence(e.text, words) else Scored(item.label, 0.0, None)
            for e, item in zip(groups[source], scored[source], strict=True)
        ]
        for source in scored
    }


# The test re-measures a fixed, hash-chosen part of the held-out sets (all of the small ones).
CHECK_SIZE = 300


def check_sets(eval_dir: Path = DEFAULT_EVAL_DIR) -> dict[str, list[Example]]:
    """What tests/guard/test_toxicity.py re-measures: a hash-chosen part of Davidson's test split, all the held-out
    employee questions and the guard's ordinary test questions (cheap to read: no SQuAD, no demo corpus)."""
    tweets = davidson(_Reader(eval_dir))
    return {
        "davidson_test": _by_hash(tweets["test"], lambda e: f"check:{e.text}", CHECK_SIZE),
        "ordinary_test": [Example(text, 0, "ordinary_test") for text in _lines(ORDINARY_TEST)],
        "employee": [Example(text, 0, "employee") for text in employee_questions()[1]],
    }


def train(eval_dir: Path, output: Path, cache: Path | None) -> dict[str, Any]:
    from kb.search.embeddings import model_id

    started = time.perf_counter()
    sets, tweets = load_sets(eval_dir)
    print(f"training rows: {len(sets.train)} {sizes_by_source(sets.train, 'toxic')}", file=sys.stderr)
    x = embed_texts([e.text for e in sets.train], cache)
    y = np.array([e.label for e in sets.train], dtype=np.float64)
    (l2, weight, neither), grid = select(x, y, sets.train)
    print(f"chosen: l2 {l2}, ordinary weight {weight}, neither weight {neither}", file=sys.stderr)
    model = fit(x, y, sets.train, l2, weight, neither)

    questions = score_sets(sets.questions, model, cache)
    words = gate_words(sets.train)
    print(f"gate: {len(words)} words", file=sys.stderr)
    documents = gated(sets.documents, score_sets(sets.documents, model, cache), words)
    question_floor = choose_threshold([(questions[s], QUESTION_FPR_BUDGET) for s in QUESTION_NEGATIVE_POOL])
    answer_floor = choose_threshold(
        [(documents["demo_sentences"], 0.0), (documents["squad_sentences"], SENTENCE_FPR_BUDGET)]
    )
    validation = {"davidson_val": tweets["val"]}
    question_threshold = balanced_threshold(score_sets(validation, model, cache)["davidson_val"], question_floor)
    gated_validation = gated(validation, score_sets(validation, model, cache), words)["davidson_val"]
    answer_threshold = balanced_threshold(gated_validation, answer_floor)
    print(
        f"floors {question_floor} / {answer_floor} -> thresholds {question_threshold} / {answer_threshold}",
        file=sys.stderr,
    )
    question_figures = figures(questions, question_threshold)
    sentence_figures = figures(documents, answer_threshold)
    print(_table("questions", question_figures, question_threshold), file=sys.stderr)
    print(_table("answer sentences", sentence_figures, answer_threshold), file=sys.stderr)
    check = figures(score_sets(check_sets(eval_dir), model, cache), question_threshold)

    record = {
        **model.as_json(),
        "gate_words": sorted(words),
        "metadata": {
            "trained": dt.date.today().isoformat(),
            "script": "python -m kb.evaluation.train_toxicity",
            "embedding_model": model_id(),
            "dimensions": model.dimensions,
            "kind": "logistic",
            "l2": l2,
            "ordinary_weight": weight,
            "neither_weight": neither,
            "toxic": "Davidson hatespeech or offensive (its `toxic` field); tweets cleaned by clean_tweet",
            "cross_validation": {
                "rule": f"{CV_FOLDS} folds of the training rows; Davidson toxic recall minus Davidson neither "
                "false-positive rate at the threshold flagging <= 1% of each of the employee, SQuAD and doc2dial "
                "training questions",
                "grid": grid,
            },
            "seed": SEED,
            "training_rows": sizes_by_source(sets.train, "toxic"),
            "davidson_sizes": {split: sizes_by_source(rows, "toxic") for split, rows in tweets.items()},
            "not_fitted": "Davidson val and test; employee questions' second half; tests/data/guard ordinary "
            "questions; doc2dial held-out dev dialogues and all its test documents; held-out SQuAD articles; the "
            "demo corpus and golden set",
            "threshold_floors": {"KB_TOXICITY_THRESHOLD": question_floor, "KB_ANSWER_TOXICITY_THRESHOLD": answer_floor},
            "thresholds": {
                "KB_TOXICITY_THRESHOLD": question_threshold,
                "KB_ANSWER_TOXICITY_THRESHOLD": answer_threshold,
            },
            "threshold_rule": {
                "KB_TOXICITY_THRESHOLD": "maximises recall minus false-positive rate on Davidson's val split (not "
                "fitted, not reported), not below the floor: the lowest with false-positive rate <= "
                f"{QUESTION_FPR_BUDGET:.0%} on each of the held-out {', '.join(QUESTION_NEGATIVE_POOL)} question "
                "sets, rules included",
                "answer_gate": f"an answer sentence is scored only with a rule hit or a word used by >= "
                f"{GATE_MIN_COUNT} toxic training tweets, >= {GATE_MIN_SHARE:.0%} of its Davidson training tweets "
                "toxic, and by no ordinary training text (gate_words); the answer-sentence figures include the gate",
                "KB_ANSWER_TOXICITY_THRESHOLD": "maximises recall minus false-positive rate on Davidson's val split "
                "through the gate, not below the floor: the lowest flagging no sentence of the demo corpus and <= "
                f"{SENTENCE_FPR_BUDGET:.0%} of the held-out SQuAD passages' sentences",
            },
            "reported_not_chosen_on": [*REPORTED_QUESTION_SETS, "davidson_test"],
            "davidson_val": "used only to place each threshold above its floor (balanced_threshold), never fitted",
            "held_out": {"questions": question_figures, "answer_sentences": sentence_figures},
            "check": {"what": "re-measured by tests/guard/test_toxicity.py (see check_sets)", "questions": check},
            "eval_files_sha256": sets.files,
            "training_seconds": round(time.perf_counter() - started, 1),
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
    return record


def measure(eval_dir: Path, weights: Path, cache: Path | None) -> dict[str, Any]:
    """Figures of existing weights at their recorded thresholds on every held-out set, without training."""
    from kb.guard.toxicity import load_model

    model = load_model(weights)
    thresholds = model.metadata["thresholds"]
    sets, _ = load_sets(eval_dir)
    words = frozenset(json.loads(weights.read_text(encoding="utf-8")).get("gate_words", ()))
    out = {}
    for kind, groups, threshold in (
        ("questions", sets.questions, thresholds["KB_TOXICITY_THRESHOLD"]),
        ("answer sentences", sets.documents, thresholds["KB_ANSWER_TOXICITY_THRESHOLD"]),
    ):
        scored = score_sets(groups, model, cache)
        if kind == "answer sentences":
            scored = gated(groups, scored, words)
        out[kind] = figures(scored, threshold)
        print(_table(f"{kind} ({weights.name})", out[kind], threshold), file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR, help="the shared evaluation data")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--no-cache", action="store_true", help="embed everything again")
    parser.add_argument("--measure", type=Path, metavar="WEIGHTS", help="only report these weights' figures")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    os.environ.setdefault("KB_WARM_EMBEDDINGS", "false")
    import django

    django.setup()
    from django.conf import settings

    from kb.search.embeddings import model_id

    if not (args.eval_dir / DAVIDSON).is_file():
        parser.error(f"no Davidson data at {args.eval_dir / DAVIDSON}; pass --eval-dir")
    cache = None if args.no_cache else settings.KB_DATA_DIR / "cache" / f"toxicity-embeddings-{model_id()}.npz"
    if args.measure:
        measure(args.eval_dir, args.measure, cache)
    else:
        train(args.eval_dir, args.output, cache)


if __name__ == "__main__":
    main()
