"""Train the prompt-injection classifier and choose its two thresholds.

Run as `python -m kb.evaluation.train_injection [--eval-dir DIR] [--output F] [--no-cache]`. It reads the
public sets in ../shared/eval (never copied into the repo) and writes the runtime guard's weights,
kb/guard/data/injection_model.json: 384 weights, an intercept and a metadata record (sources and sizes, embedding
model, thresholds, held-out figures, checksums of the files read) that tests/guard/test_injection.py
recomputes. Offline tooling: the guard only loads the file (kb.guard.injection), it never imports this module.

Why these choices:
- Only training splits are fitted. deepset is split 80/20 stratified with a fixed seed; Gandalf by its split
  guess; Tensor Trust by a hash of the attack text (one string is on one side only); JailbreakBench by a hash of
  the behaviour index, so every prompt written for one harmful goal (and that goal's benign twin) is on one
  side, and held-out recall measures new goals, not new wrappings of seen ones; SQuAD by article, for the same
  reason; the employee questions by line: the first half may be fitted, the second half is only measured.
- SciFact is evaluation data only (CC BY-NC: "do not ship it in a product"); weights fitted on it would ship it.
- Documents share the model: BIPIA training attacks inside BIPIA training e-mails and tables (and the same
  windows without the attack) teach it what an instruction inside a passage looks like. Windows are cut to the
  chunker's target size, so they look like the chunks scored at ingest.
- The penalty and the weight of the employee questions are chosen by cross-validation on the training rows
  (mean attack recall at a 1% false-positive rate), never on the held-out sets.
- Thresholds are chosen on held-out ordinary texts only (lowest threshold whose false-positive rate, rules
  included, stays within the budget), so the recall figures are not tuned on the attacks they report; the
  false-positive rates of the sets that set a threshold sit at the budget by construction, which is why the
  employee questions another developer wrote (tests/data/paraphrases.jsonl, never fitted) are reported too.
- Plain L2-regularised logistic regression solved by Newton's method in numpy: 385 parameters and a few
  thousand rows need nothing more, and the product does not import scikit-learn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb.guard.injection import MODEL_PATH, InjectionModel, first_rule
from kb.text import looks_english

SEED = 20261124
HELD_OUT_FRACTION = 0.2
# Ordinary questions: at most this share of each held-out set (employee half, SQuAD, SciFact) may be flagged.
QUESTION_FPR_BUDGET = 0.01
# A held-out set sets the other-language threshold only with at least this many ordinary non-English texts.
OTHER_LANGUAGE_MIN_TEXTS = 20
# Ordinary passages: the same budget pooled; the demo corpus, our own kind of policy text, must not be flagged.
DOCUMENT_FPR_BUDGET = 0.01
# Sample sizes: enough for a 1% false-positive budget to mean something (a few hundred per set).
SQUAD_TRAIN_QUESTIONS = 2000
SQUAD_HELD_OUT_QUESTIONS = 300
SQUAD_HELD_OUT_PASSAGES = 100
SCIFACT_ABSTRACTS = 100
BIPIA_TRAIN_CONTEXTS_PER_ATTACK = 4
BIPIA_HELD_OUT_CLEAN_PER_KIND = 50
REGULARISATION_GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
CV_FOLDS = 5
EMPLOYEE_WEIGHT_GRID = (1.0, 4.0, 8.0, 16.0, 32.0)
# The one-hidden-layer candidates (ReLU units, weight decay, employee weight): a small grid, since each fit takes
# seconds; cross-validation decides between them and the logistic regressions.
HIDDEN_GRID = ((32, 1e-4, 4.0), (64, 1e-4, 4.0), (64, 1e-3, 4.0), (64, 1e-3, 1.0))
HIDDEN_STEPS = 400
HIDDEN_LEARNING_RATE = 3e-3
# doc2dial's dev dialogues (real users' turns to public-service agents): this share of the dialogues is held out
# to choose the question threshold, the rest is fitted. The test dialogues are never read for training.
DOC2DIAL_HELD_OUT_FRACTION = 0.4
# Sources whose texts are the questions this detector really sees; `employee_weight` multiplies their weight.
CONVERSATIONAL_SOURCES = ("employee", "doc2dial")

QUESTION_NEGATIVE_POOL = ("employee", "squad", "scifact", "doc2dial_dev")
# The injection sets' held-out parts: their recall is reported, never used to choose (the test splits).
INJECTION_TEST_SETS = ("deepset", "gandalf", "tensor_trust", "jbb")
DOCUMENT_NEGATIVE_POOL = ("bipia_email_clean", "bipia_table_clean", "squad_passages", "scifact_abstracts", "demo")

REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_EVAL_DIR = REPO_DIR.parent / "shared" / "eval"
EMPLOYEE_QUESTIONS = REPO_DIR / "tests" / "data" / "employee_questions.txt"
ORDINARY_DEV = REPO_DIR / "tests" / "data" / "guard" / "ordinary_questions_dev.txt"
ORDINARY_TEST = REPO_DIR / "tests" / "data" / "guard" / "ordinary_questions_test.txt"
# Written by another author (a helper session that saw neither kb's code nor its sets, stop 40): misuse attempts
# typed into a workplace assistant (claimed authority, false premises to confirm, bulk personal data, smuggled
# instructions, pressure) and genuine questions sharing their words. Measured only, never fitted nor chosen on.
WORKPLACE_ATTACKS = REPO_DIR / "tests" / "data" / "guard" / "workplace_attacks.txt"
WORKPLACE_ORDINARY = REPO_DIR / "tests" / "data" / "guard" / "workplace_ordinary.txt"
DEMO_GOLDEN = REPO_DIR / "tests" / "data" / "golden" / "demo.jsonl"
PARAPHRASES = REPO_DIR / "tests" / "data" / "paraphrases.jsonl"
DEMO_DIR = REPO_DIR / "ingest" / "demo"
OUTPUT = MODEL_PATH  # the weights the runtime guard loads


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = injection
    source: str


@dataclass
class Sets:
    """Training rows, and held-out rows by source for questions and for document passages."""

    train: list[Example] = field(default_factory=list)
    questions: dict[str, list[Example]] = field(default_factory=dict)
    documents: dict[str, list[Example]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # path relative to the eval folder -> sha256


# --- reading the public sets ---------------------------------------------------------------------------------


def _hash_unit(key: str) -> float:
    """A stable number in [0, 1) for a key: the same split on every machine and Python version."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def _held_out(key: str) -> bool:
    return _hash_unit(key) < HELD_OUT_FRACTION


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(text.strip() for text in texts if text and text.strip()))


class _Reader:
    """Reads files under the eval folder and remembers their checksums for the metadata."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def path(self, relative: str) -> Path:
        path = self.root / relative
        self.files[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        return path

    def jsonl(self, relative: str) -> list[dict[str, Any]]:
        return _jsonl(self.path(relative))

    def json(self, relative: str) -> Any:
        return json.loads(self.path(relative).read_text(encoding="utf-8"))


def employee_questions() -> tuple[list[str], list[str]]:
    """The hand-written employee questions: (first half, may be fitted; second half, held out)."""
    lines = [line.strip() for line in EMPLOYEE_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    questions = [line for line in lines if line]
    half = len(questions) // 2
    return questions[:half], questions[half:]


def paraphrase_questions() -> list[str]:
    """Employee questions another developer wrote for the semantic-cache tests: never fitted and not used to
    choose a threshold, so they check the threshold on phrasing that is not ours."""
    with PARAPHRASES.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return _unique(text for row in rows for text in (row["a"], row["b"]))


def _lines(path: Path) -> list[str]:
    return _unique(path.read_text(encoding="utf-8").splitlines())


def ordinary_question_sets(eval_dir: Path = DEFAULT_EVAL_DIR) -> dict[str, list[Example]]:
    """Ordinary questions the guard must let through, by set, for measuring only (`--measure`; nothing here is
    fitted): real users' questions to public-service agents from doc2dial (first turns and follow-ups, "hi",
    "can you help me?"; dev and test documents apart), the employee questions written for the guard
    (tests/data/guard: the dev list for choosing, the test list written before any tuning and never chosen
    on), the workplace lists another author wrote (attempts as positives), and the demo golden set's questions
    (its injection attempts as positives)."""
    groups: dict[str, list[Example]] = {}
    for split in ("dev", "test"):
        for name, kind in (("golden", "first"), ("followup", "followup")):
            rows = _jsonl(eval_dir / "doc2dial" / f"{name}-{split}.jsonl")
            source = f"doc2dial_{split}_{kind}"
            groups[source] = [Example(text, 0, source) for text in _unique(row["question"] for row in rows)]
    for split, path in (("dev", ORDINARY_DEV), ("test", ORDINARY_TEST)):
        groups[f"ordinary_{split}"] = [Example(text, 0, f"ordinary_{split}") for text in _lines(path)]
    groups["workplace"] = [Example(text, 1, "workplace") for text in _lines(WORKPLACE_ATTACKS)] + [
        Example(text, 0, "workplace") for text in _lines(WORKPLACE_ORDINARY)
    ]
    groups["demo_golden"] = [
        Example(row["question"], int(row["kind"] == "injection"), "demo_golden") for row in _jsonl(DEMO_GOLDEN)
    ]
    return groups


def _deepset(reader: _Reader, sets: Sets) -> None:
    rows = reader.jsonl("prompt-injection/deepset_prompt_injections_train.jsonl")
    rng = random.Random(SEED)
    held_out: list[Example] = []
    for label in (0, 1):
        texts = _unique(row["text"] for row in rows if row["label"] == label)
        rng.shuffle(texts)
        cut = round(len(texts) * HELD_OUT_FRACTION)
        held_out += [Example(text, label, "deepset") for text in texts[:cut]]
        sets.train += [Example(text, label, f"deepset_{label}") for text in texts[cut:]]
    sets.questions["deepset"] = held_out


def _gandalf(reader: _Reader, sets: Sets) -> None:
    rows = reader.jsonl("prompt-injection/lakera_gandalf_ignore_instructions.jsonl")
    train = _unique(row["text"] for row in rows if row["split_guess"] == "train")
    seen = set(train)
    sets.train += [Example(text, 1, "gandalf") for text in train]
    held = _unique(row["text"] for row in rows if row["split_guess"] != "train")
    sets.questions["gandalf"] = [Example(text, 1, "gandalf") for text in held if text not in seen]


def _tensor_trust(reader: _Reader, sets: Sets) -> None:
    attacks = _unique(
        row["attack"]
        for name in ("hijacking", "extraction")
        for row in reader.jsonl(f"prompt-injection/tensor-trust/{name}_robustness_dataset.jsonl")
    )
    sets.train += [Example(text, 1, "tensor_trust") for text in attacks if not _held_out(f"tt:{text}")]
    sets.questions["tensor_trust"] = [Example(text, 1, "tensor_trust") for text in attacks if _held_out(f"tt:{text}")]


def _jbb(reader: _Reader, sets: Sets) -> None:
    prompts = reader.jsonl("prompt-injection/jbb_artifact_prompts.jsonl")
    by_side: dict[bool, list[str]] = {True: [], False: []}
    for row in prompts:
        by_side[_held_out(f"jbb:{row['index']}")].append(row["prompt"])
    sets.train += [Example(text, 1, "jbb") for text in _unique(by_side[False])]
    sets.questions["jbb"] = [Example(text, 1, "jbb") for text in _unique(by_side[True])]
    benign = [row for row in reader.jsonl("prompt-injection/jbb_behaviors.jsonl") if row["split"] == "benign"]
    sets.train += [Example(row["goal"], 0, "jbb_benign") for row in benign if not _held_out(f"jbb:{row['index']}")]
    sets.questions["jbb_benign"] = [
        Example(row["goal"], 0, "jbb_benign") for row in benign if _held_out(f"jbb:{row['index']}")
    ]


def _by_hash(items: Sequence[Any], key: Callable[[Any], str], n: int) -> list[Any]:
    """A fixed sample of `n` items: the ones with the smallest hashes (independent of file order)."""
    return sorted(items, key=lambda item: _hash_unit(key(item)))[:n]


def _squad(reader: _Reader, sets: Sets) -> None:
    passages = reader.jsonl("squad2-dev-cs224n/passages.jsonl")
    questions = reader.jsonl("squad2-dev-cs224n/qa.jsonl")

    # Whole articles are held out, in hash order, until they hold enough passages to sample from.
    # Whole articles are held out, in hash order, until they hold enough passages to sample from. An article is
    # named by the part of the passage id before "#" ("Yuan_dynasty#3"): the title field spells it with spaces.
    def article(passage_id: str) -> str:
        return passage_id.rsplit("#", 1)[0]

    per_article: dict[str, int] = {}
    for passage in passages:
        per_article[article(passage["_id"])] = per_article.get(article(passage["_id"]), 0) + 1
    held_articles: set[str] = set()
    for name in _by_hash(sorted(per_article), lambda name: f"squad:{name}", len(per_article)):
        if sum(per_article[held] for held in held_articles) >= SQUAD_HELD_OUT_PASSAGES:
            break
        held_articles.add(name)

    def held(passage_id: str) -> bool:
        return article(passage_id) in held_articles

    train_q = [q for q in questions if not held(q["passage_id"])]
    held_q = [q for q in questions if held(q["passage_id"])]
    pick = _by_hash(train_q, lambda q: f"squad-q:{q['id']}", SQUAD_TRAIN_QUESTIONS)
    sets.train += [Example(q["question"], 0, "squad") for q in pick]
    pick = _by_hash(held_q, lambda q: f"squad-q:{q['id']}", SQUAD_HELD_OUT_QUESTIONS)
    sets.questions["squad"] = [Example(q["question"], 0, "squad") for q in pick]
    sets.train += [Example(p["text"], 0, "squad_passages") for p in passages if not held(p["_id"])]
    pick = _by_hash([p for p in passages if held(p["_id"])], lambda p: f"squad-p:{p['_id']}", SQUAD_HELD_OUT_PASSAGES)
    sets.documents["squad_passages"] = [Example(p["text"], 0, "squad_passages") for p in pick]


def _doc2dial(reader: _Reader, sets: Sets) -> None:
    """Real users' turns from doc2dial's dev documents ("hi", "can you help me?", "yes I am", "what do I do
    next?"): the conversational register that the injection sets' ordinary rows lack and that a plain
    regression confused with attacks addressed to the assistant. Split by dialogue, so that one conversation's
    turns are on one side; a text seen in training is dropped from the held-out side."""
    rows = reader.jsonl("doc2dial/golden-dev.jsonl") + reader.jsonl("doc2dial/followup-dev.jsonl")

    def held(row: dict[str, Any]) -> bool:
        return _hash_unit(f"d2d:{row['id'].rsplit('_', 1)[0]}") < DOC2DIAL_HELD_OUT_FRACTION

    fitted = _unique(row["question"] for row in rows if not held(row))
    seen = set(fitted)
    sets.train += [Example(text, 0, "doc2dial") for text in fitted]
    held_out = [text for text in _unique(row["question"] for row in rows if held(row)) if text not in seen]
    sets.questions["doc2dial_dev"] = [Example(text, 0, "doc2dial_dev") for text in held_out]


def _scifact(reader: _Reader, sets: Sets) -> None:
    claims = reader.jsonl("scifact/claims/claims_dev.jsonl")
    sets.questions["scifact"] = [Example(claim["claim"], 0, "scifact") for claim in claims]
    corpus = reader.jsonl("scifact/corpus.jsonl")
    pick = _by_hash(corpus, lambda doc: f"scifact:{doc['_id']}", SCIFACT_ABSTRACTS)
    sets.documents["scifact_abstracts"] = [Example(doc["text"], 0, "scifact_abstracts") for doc in pick]


# --- BIPIA: attack strings inside e-mails and tables, cut to chunk-sized windows -----------------------------

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)")
POSITIONS = ("start", "middle", "end")


def _units(context: str) -> list[str]:
    """Lines of the context, long lines split at sentences, so a window can be cut at a natural boundary."""
    units: list[str] = []
    for line in context.splitlines():
        if line.strip():
            units += [piece for piece in _SENTENCE_BREAK.split(line.strip()) if piece]
    return units


def _token_counter() -> Callable[[str], int]:
    from ingest.chunker import wordpiece_counter

    return wordpiece_counter()


def bipia_window(context: str, attack: str | None, position: str, budget: int, count: Callable[[str], int]) -> str:
    """The context with `attack` inserted as its own line at `position` (BIPIA's start/middle/end), then trimmed
    from the far side(s) to `budget` tokens around the insertion point: what one ingest chunk would hold.
    With attack=None, the same window without the attack (the control)."""
    units = _units(context)
    at = {"start": 0, "middle": len(units) // 2, "end": len(units)}[position]
    window = [*units[:at], attack, *units[at:]] if attack else units
    anchor = min(at, len(window) - 1)  # the attack's index, or where it would have been
    low, high = 0, len(window)  # the window is window[low:high]
    while high - low > 1 and count("\n".join(window[low:high])) > budget:
        # Drop a unit from the side with more of them, never the anchor itself.
        if anchor - low >= high - 1 - anchor:
            low += 1
        else:
            high -= 1
    return "\n".join(window[low:high])


def _bipia_attacks(reader: _Reader, split: str) -> list[str]:
    attacks: list[str] = []
    for kind in ("text", "code"):
        for strings in reader.json(f"prompt-injection/bipia/{kind}_attack_{split}.json").values():
            attacks += strings
    return _unique(attacks)


def _bipia(reader: _Reader, sets: Sets, budget: int, count: Callable[[str], int], with_training: bool) -> None:
    contexts = {
        (kind, split): [row["context"] for row in reader.jsonl(f"prompt-injection/bipia/{kind}/{split}.jsonl")]
        for kind in ("email", "table")
        for split in ("train", "test")
    }
    # Training: each training attack in a few training contexts (e-mail and table alternately), with the same
    # windows without it as negatives, so that "an e-mail" or "a table" alone is not the signal.
    for i, attack in enumerate(_bipia_attacks(reader, "train") if with_training else []):
        for j in range(BIPIA_TRAIN_CONTEXTS_PER_ATTACK):
            kind = ("email", "table")[(i + j) % 2]
            pool = contexts[kind, "train"]
            context = pool[int(_hash_unit(f"bipia:{i}:{j}") * len(pool))]
            position = POSITIONS[(i + j) % 3]
            sets.train.append(Example(bipia_window(context, attack, position, budget, count), 1, "bipia_attack"))
            sets.train.append(Example(bipia_window(context, None, position, budget, count), 0, "bipia_clean"))
    # Held out: every test attack once, in a test context, e-mail and table alternately; and clean test windows.
    for kind in ("email", "table"):
        sets.documents[f"bipia_{kind}"] = []
    for i, attack in enumerate(_bipia_attacks(reader, "test")):
        kind = ("email", "table")[i % 2]
        pool = contexts[kind, "test"]
        context = pool[int(_hash_unit(f"bipia-test:{i}") * len(pool))]
        window = bipia_window(context, attack, POSITIONS[i % 3], budget, count)
        sets.documents[f"bipia_{kind}"].append(Example(window, 1, f"bipia_{kind}"))
    for kind in ("email", "table"):
        pool = _by_hash(contexts[kind, "test"], lambda text: f"bipia-clean:{text}", BIPIA_HELD_OUT_CLEAN_PER_KIND)
        sets.documents[f"bipia_{kind}_clean"] = [
            Example(bipia_window(context, None, POSITIONS[i % 3], budget, count), 0, f"bipia_{kind}_clean")
            for i, context in enumerate(pool)
        ]


def demo_chunks() -> list[str]:
    """The demo corpus as ingest indexes it: parsed, chunked, each chunk with its title and heading path (the
    text whose vector the ingest pipeline already has)."""
    from django.conf import settings

    from ingest.chunker import chunk_document
    from ingest.parsers import parse, sniff_media_type
    from ingest.services import indexed_text

    texts: list[str] = []
    for path in sorted(DEMO_DIR.iterdir()):
        if path.suffix not in {".md", ".txt", ".html", ".pdf", ".docx"}:
            continue
        data = path.read_bytes()
        parsed = parse(data, sniff_media_type(data, path.name))
        drafts = chunk_document(
            parsed,
            target_tokens=settings.KB_CHUNK_TARGET_TOKENS,
            max_tokens=settings.KB_CHUNK_MAX_TOKENS,
            overlap_tokens=settings.KB_CHUNK_OVERLAP_TOKENS,
        )
        title = parsed.title or path.stem
        texts += [indexed_text(title, draft.text, draft.heading_path) for draft in drafts]
    return texts


def load_sets(eval_dir: Path = DEFAULT_EVAL_DIR, *, with_training: bool = True) -> Sets:
    """All training rows and held-out sets. Needs Django settings (the chunker's sizes and tokenizer).
    with_training=False skips the costly part of the training rows (BIPIA windows) for callers that only
    measure; the cheap training rows are still read."""
    from django.conf import settings

    reader = _Reader(eval_dir)
    sets = Sets()
    first, second = employee_questions()
    sets.train += [Example(text, 0, "employee") for text in first]
    sets.questions["employee"] = [Example(text, 0, "employee") for text in second]
    sets.questions["employee_other_author"] = [
        Example(text, 0, "employee_other_author") for text in paraphrase_questions()
    ]
    _deepset(reader, sets)
    _gandalf(reader, sets)
    _tensor_trust(reader, sets)
    _jbb(reader, sets)
    _squad(reader, sets)
    _doc2dial(reader, sets)
    _scifact(reader, sets)
    _bipia(reader, sets, settings.KB_CHUNK_TARGET_TOKENS, _token_counter(), with_training)
    sets.documents["demo"] = [Example(text, 0, "demo") for text in demo_chunks()]
    sets.files = dict(sorted(reader.files.items()))
    return sets


# The test re-measures the shipped weights on a fixed part of every held-out set (all the employee questions,
# a hash-chosen sample of the others; fewer of the long texts, which cost ~15 ms each to embed): the whole
# held-out sets take over a minute on a busy 2-core machine. The demo corpus has a test of its own.
CHECK_SHORT = 40
CHECK_LONG = 10
CHECK_ALL = ("employee",)
CHECK_LONG_SOURCES = ("tensor_trust", "jbb")


def check_sets(sets: Sets) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """The parts of the held-out question and document sets that tests/guard/test_injection.py re-measures."""

    def part(source: str, examples: list[Example], size: int) -> list[Example]:
        return examples if source in CHECK_ALL else _by_hash(examples, lambda e: f"check:{e.text}", size)

    questions = {
        source: part(source, examples, CHECK_LONG if source in CHECK_LONG_SOURCES else CHECK_SHORT)
        for source, examples in sets.questions.items()
    }
    documents = {
        source: part(source, examples, CHECK_LONG) for source, examples in sets.documents.items() if source != "demo"
    }
    return questions, documents


# --- embeddings, with a cache so that re-running the script costs seconds --------------------------------------


def embed_texts(texts: Sequence[str], cache_path: Path | None = None) -> np.ndarray:
    from kb.search.embeddings import embed

    cache: dict[str, np.ndarray] = {}
    if cache_path and cache_path.exists():
        with np.load(cache_path) as stored:
            cache = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
    keys = [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]
    missing = list(dict.fromkeys(key for key in keys if key not in cache))
    if missing:
        text_of = dict(zip(keys, texts, strict=True))
        vectors = embed([text_of[key] for key in missing])
        cache.update(zip(missing, vectors, strict=True))
        if cache_path:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
            os.replace(tmp, cache_path)
    return np.stack([cache[key] for key in keys]).astype(np.float64)


# --- the model -----------------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weighted logistic regression, L2 penalty on the coefficients (not the intercept), by Newton's method:
    minimises mean(w * logloss) + l2/2 * |coef|^2. Converges in a handful of steps at this size."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    theta = np.zeros(d + 1)
    weights = weights / weights.mean()

    def loss(theta: np.ndarray) -> float:
        z = design @ theta
        # log(1 + e^z) - y z, stable for large |z|
        return float(np.mean(weights * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(penalty * theta**2))

    current = loss(theta)
    for _ in range(100):
        p = _sigmoid(design @ theta)
        gradient = design.T @ (weights * (p - y)) / n + penalty * theta
        hessian = (design * (weights * p * (1 - p))[:, None]).T @ design / n + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:  # backtracking keeps every step a descent step
            candidate = theta - scale * step
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2
        theta, previous, current = candidate, current, value
        if previous - current < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def fit_hidden(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float, hidden: int, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One hidden ReLU layer, weighted log loss, Adam with weight decay `l2`, full batch, fixed steps and seed:
    (hidden weight, hidden bias, output weights, output bias). torch is here already (the embedding model runs
    on it); the runtime guard only multiplies the stored matrices in numpy."""
    import torch

    torch.manual_seed(seed)
    first, second = torch.nn.Linear(x.shape[1], hidden), torch.nn.Linear(hidden, 1)
    net = torch.nn.Sequential(first, torch.nn.ReLU(), second)
    inputs = torch.tensor(x, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32)
    scale = torch.tensor(weights / weights.mean(), dtype=torch.float32)
    optimiser = torch.optim.Adam(net.parameters(), lr=HIDDEN_LEARNING_RATE, weight_decay=l2)
    for _ in range(HIDDEN_STEPS):
        optimiser.zero_grad()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs).squeeze(1), targets, reduction="none")
        (losses * scale).mean().backward()
        optimiser.step()
    return (
        first.weight.detach().numpy().T.astype(np.float64),
        first.bias.detach().numpy().astype(np.float64),
        second.weight.detach().numpy()[0].astype(np.float64),
        float(second.bias.detach().numpy()[0]),
    )


@dataclass(frozen=True)
class Candidate:
    """One point of the model grid: a logistic regression (hidden=0) or one hidden layer of `hidden` units."""

    l2: float
    employee_weight: float
    hidden: int = 0

    def describe(self) -> dict[str, Any]:
        kind = {"kind": "hidden_layer", "hidden_units": self.hidden} if self.hidden else {"kind": "logistic"}
        return {**kind, "l2": self.l2, "employee_weight": self.employee_weight}


CANDIDATES = (
    *(Candidate(l2, weight) for weight in EMPLOYEE_WEIGHT_GRID for l2 in REGULARISATION_GRID),
    *(Candidate(l2, weight, hidden) for hidden, l2, weight in HIDDEN_GRID),
)


def fit_candidate(candidate: Candidate, x: np.ndarray, y: np.ndarray, examples: Sequence[Example]) -> InjectionModel:
    weights = source_weights(examples, candidate.employee_weight)
    if not candidate.hidden:
        coef, intercept = fit_logistic(x, y, weights, candidate.l2)
        return InjectionModel(coef=coef, intercept=intercept, metadata={})
    hidden_weight, hidden_bias, coef, intercept = fit_hidden(x, y, weights, candidate.l2, candidate.hidden)
    return InjectionModel(
        coef=coef, intercept=intercept, metadata={}, hidden_weight=hidden_weight, hidden_bias=hidden_bias
    )


def source_weights(examples: Sequence[Example], employee_weight: float = 1.0) -> np.ndarray:
    """Each source carries the same total weight within its class, and the two classes weigh the same: 200
    employee questions count as much as 2,000 SQuAD questions, and 162 deepset attacks as much as 777 Gandalf
    ones, so that no single public set defines what an injection or an ordinary text is. The employee questions
    (the texts this detector will really see) can be weighted up by `employee_weight`."""
    counts: dict[tuple[int, str], int] = {}
    for example in examples:
        counts[example.label, example.source] = counts.get((example.label, example.source), 0) + 1
    per_class = {label: sum(1 for key in counts if key[0] == label) for label in (0, 1)}
    weights = np.array([1.0 / (counts[e.label, e.source] * per_class[e.label]) for e in examples])
    return weights * np.array([employee_weight if e.source in CONVERSATIONAL_SOURCES else 1.0 for e in examples])


# --- thresholds and figures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    label: int
    score: float
    rule: str | None
    english: bool = True  # kb.text.looks_english


@dataclass(frozen=True)
class QuestionThresholds:
    """The question threshold for English, and the stricter one for other languages (the embedding model reads
    English, so German ordinary questions sit close to German attacks)."""

    english: float
    other: float

    def __str__(self) -> str:
        return f"{self.english}, other languages {self.other}"


def score_sets(groups: dict[str, list[Example]], model: InjectionModel, cache: Path | None, *, documents: bool = False):
    """Classifier probability and first rule for every held-out example, by source (`documents`: passages, which
    the rules for documents apply to)."""
    texts = [example.text for examples in groups.values() for example in examples]
    probabilities = model.probabilities(embed_texts(texts, cache)) if texts else np.array([])
    scored: dict[str, list[Scored]] = {}
    i = 0
    for source, examples in groups.items():
        scored[source] = []
        for example in examples:
            scored[source].append(
                Scored(
                    example.label,
                    float(probabilities[i]),
                    first_rule(example.text, document=documents),
                    looks_english(example.text),
                )
            )
            i += 1
    return scored


def _flagged(item: Scored, threshold: float | QuestionThresholds) -> bool:
    if isinstance(threshold, QuestionThresholds):
        threshold = threshold.english if item.english else threshold.other
    return item.rule is not None or item.score >= threshold


def choose_threshold(constraints: Sequence[tuple[list[Scored], float]]) -> float:
    """The lowest threshold (to 3 decimals) at which every list of ordinary texts keeps its false-positive rate
    (rule hits included) within its budget; recall only grows as the threshold falls, so this maximises it."""
    scores = [item.score for items, _ in constraints for item in items]
    candidates = np.unique(np.minimum(np.round(np.array([0.0, *scores]), 3) + 0.001, 0.999))
    allowed = np.ones(len(candidates), dtype=bool)
    for items, budget in constraints:
        by_rule = sum(item.rule is not None for item in items)
        free = np.sort([item.score for item in items if item.rule is None])
        flagged = by_rule + len(free) - np.searchsorted(free, candidates, side="left")  # scores >= threshold
        allowed &= flagged <= budget * len(items)
    return round(float(candidates[np.argmax(allowed)]), 3) if allowed.any() else 0.999


def _pooled(groups: Sequence[list[Scored]]) -> list[Scored]:
    return [item for items in groups for item in items]


# Out-of-fold scores of the training rows decide the penalty and the employee weight: the same rule as the
# real thresholds (1% of ordinary texts), the mean recall over these attack sources. The held-out sets are
# left for the figures.
CV_QUESTION_NEGATIVES = ("employee", "squad", "deepset_0", "doc2dial")
CV_DOCUMENT_NEGATIVES = ("bipia_clean", "squad_passages")
DOCUMENT_TRAINING_SOURCES = ("bipia_attack", *CV_DOCUMENT_NEGATIVES)  # passages: the rules for documents apply
CV_ATTACKS = {"questions": ("deepset_1", "gandalf", "tensor_trust", "jbb"), "documents": ("bipia_attack",)}


def select_candidate(x: np.ndarray, y: np.ndarray, examples: Sequence[Example]) -> tuple[Candidate, list]:
    """The candidate with the best mean out-of-fold recall, and the grid's results, by 5-fold cross-validation
    on the training rows only (folds by a hash of the text, so that duplicates share a fold)."""
    fold = np.array([int(_hash_unit(f"cv:{example.text}") * CV_FOLDS) for example in examples])
    rules = [first_rule(example.text, document=example.source in DOCUMENT_TRAINING_SOURCES) for example in examples]
    by_source: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_source.setdefault(example.source, []).append(i)
    grid = []
    for candidate in CANDIDATES:
        oof = np.zeros(len(examples))
        for k in range(CV_FOLDS):
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            model = fit_candidate(candidate, x[train], y[train], [examples[int(i)] for i in train])
            oof[test] = model.probabilities(x[test])
        scored = {
            source: [Scored(examples[i].label, float(oof[i]), rules[i]) for i in rows]
            for source, rows in by_source.items()
        }
        recalls = []
        for kind, negatives in (("questions", CV_QUESTION_NEGATIVES), ("documents", CV_DOCUMENT_NEGATIVES)):
            if kind == "questions":  # each kind of ordinary question within the budget
                constraints = [(scored[source], QUESTION_FPR_BUDGET) for source in negatives]
            else:
                constraints = [(_pooled([scored[source] for source in negatives]), DOCUMENT_FPR_BUDGET)]
            threshold = choose_threshold(constraints)
            for source in CV_ATTACKS[kind]:
                recalls.append(np.mean([_flagged(item, threshold) for item in scored[source]]))
        grid.append({**candidate.describe(), "mean_recall": round(float(np.mean(recalls)), 4)})
        print(f"  cv {grid[-1]}", file=sys.stderr)
    best = max(range(len(grid)), key=lambda i: grid[i]["mean_recall"])
    return CANDIDATES[best], grid


def figures(scored: dict[str, list[Scored]], threshold: float | QuestionThresholds) -> dict[str, dict[str, Any]]:
    """Per source: how many injections were caught (recall) and how many ordinary texts were flagged (FPR)."""
    out: dict[str, dict[str, Any]] = {}
    for source, items in scored.items():
        positives = [item for item in items if item.label == 1]
        negatives = [item for item in items if item.label == 0]
        row: dict[str, Any] = {"n": len(items)}
        if positives:
            caught = sum(_flagged(item, threshold) for item in positives)
            row.update(
                positives=len(positives),
                caught=caught,
                caught_by_rule=sum(item.rule is not None for item in positives),
                recall=round(caught / len(positives), 4),
            )
        if negatives:
            flagged = sum(_flagged(item, threshold) for item in negatives)
            row.update(
                negatives=len(negatives),
                flagged=flagged,
                flagged_by_rule=sum(item.rule is not None for item in negatives),
                fpr=round(flagged / len(negatives), 4),
            )
        out[source] = row
    return out


def _table(title: str, rows: dict[str, dict[str, Any]], threshold: float | QuestionThresholds) -> str:
    lines = [f"{title} (threshold {threshold})", f"  {'source':<24} {'n':>5} {'recall':>16} {'false positives':>18}"]
    for source, row in rows.items():
        recall = f"{row['recall']:.1%} ({row['caught']}/{row['positives']})" if "recall" in row else "-"
        fpr = f"{row['fpr']:.1%} ({row['flagged']}/{row['negatives']})" if "fpr" in row else "-"
        lines.append(f"  {source:<24} {row['n']:>5} {recall:>16} {fpr:>18}")
    return "\n".join(lines)


def sizes_by_source(examples: Sequence[Example], positive: str = "injection") -> dict[str, int]:
    """How many examples of each source and label ("source:injection", "source:ordinary"), for the metadata."""
    sizes: dict[str, int] = {}
    for example in examples:
        key = f"{example.source}:{positive if example.label else 'ordinary'}"
        sizes[key] = sizes.get(key, 0) + 1
    return dict(sorted(sizes.items()))


def train(eval_dir: Path, output: Path, cache: Path | None) -> dict[str, Any]:
    from django.conf import settings

    from kb.search.embeddings import model_id

    started = time.perf_counter()
    sets = load_sets(eval_dir)
    print(f"training rows: {len(sets.train)} {sizes_by_source(sets.train)}", file=sys.stderr)
    x = embed_texts([example.text for example in sets.train], cache)
    y = np.array([example.label for example in sets.train], dtype=np.float64)
    candidate, grid = select_candidate(x, y, sets.train)
    print(f"chosen: {candidate.describe()}", file=sys.stderr)
    model = fit_candidate(candidate, x, y, sets.train)

    questions = score_sets(sets.questions, model, cache)
    documents = score_sets(sets.documents, model, cache, documents=True)
    # Each kind of ordinary question within the budget (so the pool is too): one set's quirks cannot hide
    # behind another's size.
    english = choose_threshold([(questions[source], QUESTION_FPR_BUDGET) for source in QUESTION_NEGATIVE_POOL])
    # Other languages by the same rule, on every held-out set with enough texts in them (deepset's German ones),
    # never below the English threshold.
    other_languages = [
        [item for item in questions[source] if not item.english and item.label == 0] for source in questions
    ]
    other = choose_threshold(
        [(items, QUESTION_FPR_BUDGET) for items in other_languages if len(items) >= OTHER_LANGUAGE_MIN_TEXTS]
    )
    question_threshold = QuestionThresholds(english=english, other=max(english, other))
    ordinary_passages = [documents[source] for source in DOCUMENT_NEGATIVE_POOL]
    # The demo corpus is our own kind of text (imperative policy prose): none of it may be flagged.
    document_threshold = choose_threshold([(_pooled(ordinary_passages), DOCUMENT_FPR_BUDGET), (documents["demo"], 0.0)])

    question_figures = figures(questions, question_threshold)
    document_figures = figures(documents, document_threshold)
    check_questions, check_documents = check_sets(sets)
    check = {
        "what": "parts of the held-out sets re-measured by tests/guard/test_injection.py (see check_sets)",
        "questions": figures(score_sets(check_questions, model, cache), question_threshold),
        "documents": figures(score_sets(check_documents, model, cache, documents=True), document_threshold),
    }
    print(_table("questions", question_figures, question_threshold), file=sys.stderr)
    print(_table("document passages", document_figures, document_threshold), file=sys.stderr)

    record = {
        **model.as_json(),
        "metadata": {
            "trained": dt.date.today().isoformat(),
            "script": "python -m kb.evaluation.train_injection",
            "embedding_model": model_id(),
            "dimensions": model.dimensions,
            **candidate.describe(),
            "cross_validation": {
                "rule": "5 folds of the training rows; mean recall of deepset, Gandalf, Tensor Trust, JBB and BIPIA "
                "training attacks at the threshold that flags <= 1% of each of the employee, SQuAD, deepset and "
                "doc2dial ordinary questions (and of clean BIPIA windows + SQuAD passages, for BIPIA)",
                "grid": grid,
            },
            "seed": SEED,
            "held_out_fraction": HELD_OUT_FRACTION,
            "training_rows": sizes_by_source(sets.train),
            "weighting": "each source equal within its class, classes equal, employee and doc2dial questions x "
            "employee_weight",
            "not_fitted": "SciFact (CC BY-NC, evaluation only); employee questions' second half; doc2dial's held-out "
            "dev dialogues and all its test documents; all test splits",
            "thresholds": {
                "KB_INJECTION_THRESHOLD": question_threshold.english,
                "KB_INJECTION_THRESHOLD_OTHER_LANGUAGES": question_threshold.other,
                "KB_DOCUMENT_INJECTION_THRESHOLD": document_threshold,
            },
            "threshold_rule": {
                "KB_INJECTION_THRESHOLD": f"lowest with false-positive rate <= {QUESTION_FPR_BUDGET:.0%} on each of "
                f"the held-out {', '.join(QUESTION_NEGATIVE_POOL)} question sets, rules included",
                "KB_INJECTION_THRESHOLD_OTHER_LANGUAGES": "lowest with false-positive rate <= "
                f"{QUESTION_FPR_BUDGET:.0%} on the texts not read as English (kb.text.looks_english) of each held-out "
                f"question set with at least {OTHER_LANGUAGE_MIN_TEXTS} of them, and not below KB_INJECTION_THRESHOLD",
                "KB_DOCUMENT_INJECTION_THRESHOLD": f"lowest with false-positive rate <= {DOCUMENT_FPR_BUDGET:.0%} on "
                f"the pooled {', '.join(DOCUMENT_NEGATIVE_POOL)} passages, and no demo chunk flagged",
            },
            "held_out": {"questions": question_figures, "documents": document_figures},
            "check": check,
            "bipia_window_tokens": settings.KB_CHUNK_TARGET_TOKENS,
            "eval_files_sha256": sets.files,
            "training_seconds": round(time.perf_counter() - started, 1),
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
    return record


def measure(eval_dir: Path, weights: Path, cache: Path | None) -> dict[str, Any]:
    """Figures of existing weights (at the thresholds recorded with them) on every held-out set, without
    training: how today's guard does on sets added since it was trained."""
    from kb.guard.injection import load_model

    model = load_model(weights)
    thresholds = model.metadata["thresholds"]
    sets = load_sets(eval_dir, with_training=False)
    out = {}
    for kind, groups, threshold in (
        ("questions", {**sets.questions, **ordinary_question_sets(eval_dir)}, recorded_question_thresholds(model)),
        ("documents", sets.documents, thresholds["KB_DOCUMENT_INJECTION_THRESHOLD"]),
    ):
        out[kind] = figures(score_sets(groups, model, cache, documents=kind == "documents"), threshold)
        print(_table(f"{kind} ({weights.name})", out[kind], threshold), file=sys.stderr)
    return out


def recorded_question_thresholds(model: InjectionModel) -> QuestionThresholds:
    """The question thresholds stored with the weights (weights from before the other-language threshold use
    the one threshold for every language)."""
    thresholds = model.metadata["thresholds"]
    english = thresholds["KB_INJECTION_THRESHOLD"]
    return QuestionThresholds(english, thresholds.get("KB_INJECTION_THRESHOLD_OTHER_LANGUAGES", english))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR, help="the shared evaluation data")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--no-cache", action="store_true", help="embed everything again")
    parser.add_argument(
        "--measure", type=Path, metavar="WEIGHTS", help="only report these weights' figures on every held-out set"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    os.environ.setdefault("KB_WARM_EMBEDDINGS", "false")
    import django

    django.setup()
    from django.conf import settings

    from kb.search.embeddings import model_id

    if not (args.eval_dir / "prompt-injection").is_dir():
        parser.error(f"no prompt-injection sets under {args.eval_dir}; pass --eval-dir")
    cache = None if args.no_cache else settings.KB_DATA_DIR / "cache" / f"injection-embeddings-{model_id()}.npz"
    if args.measure:
        measure(args.eval_dir, args.measure, cache)
    else:
        train(args.eval_dir, args.output, cache)


if __name__ == "__main__":
    main()
