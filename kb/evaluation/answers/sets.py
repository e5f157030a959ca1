"""Named evaluation sets: a golden file on the corpus it was written for, each with a role.

A `dev` set may be looked at and tuned on (thresholds, weights, rules are chosen on it); a `test` set never
is: its figures are reported, not optimised, so that they say how kb does on questions and documents it was
not fitted to (issue #16, GUIDE §6). `manage.py evaluate_sets` runs several of them side by side.

The sets:
- `demo` (dev): the demo corpus (ingest/demo) and its golden set, which kb was built on;
- `blind-handbook`, `blind-clinic`, `blind-retail`, `blind-hotel`, `blind-council` (dev), `blind-utility` and
  `blind-software` (test): golden
  sets written blind, by sessions that had not read kb's code or settings, on fictional organisations'
  documents (tests/data/golden/<name>/golden.jsonl on its docs/ folder). Nobody working on kb has read the
  test sets' questions; blind-clinic was a test set until its hard questions were read (routing, stop 25);
- `doc2dial-dev`, `doc2dial-test`: doc2dial's first user turns on its 273 public-service documents, split by
  document (../shared/eval/doc2dial). All answerable; the questions that the human agent answered with a
  question (the sidecar's `agent_asked_back`) are kind `asked_back`, reported apart;
- `doc2dial-followup-dev`, `doc2dial-followup-test`: later turns of those dialogues, asked after their
  earlier turns (`context`);
- `squad-dev`, `squad-test`: SQuAD 2.0 (../shared/eval/squad2-dev-cs224n) made into a corpus folder and a
  golden file under KB_DATA_DIR/eval/ (generated, never committed): its articles split in two with a fixed
  seed, every paragraph of a split's articles a document, SQUAD_QUESTIONS of their questions sampled with
  a fixed seed; an answerable question must state the first gold answer, an unanswerable one (written to
  look answerable from its paragraph) is kind `near_miss`.

A set whose files are absent (../shared not mounted, a golden set not yet written) is skipped, with the
reason, by whoever runs sets: `unavailable` says why.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from kb.evaluation.answers.golden import GoldenError, GoldenItem, golden_load

DEV, TEST = "dev", "test"
ROLES = (DEV, TEST)
ASKED_BACK = "asked_back"
NEAR_MISS = "near_miss"
SQUAD_SEED = 20260416  # fixed: the split and the sample are the same on every machine and run
SQUAD_QUESTIONS = 300  # per split: enough for rates to 3 points, a few minutes with the extractive answerer


@dataclass(frozen=True)
class EvaluationSet:
    name: str
    role: str  # DEV or TEST
    description: str
    golden: Path
    corpus: Path
    sources: tuple[Path, ...] = ()  # what must exist to build or read the set
    sidecar: Path | None = None  # doc2dial's agent replies, read for `agent_asked_back`
    build: Callable[[EvaluationSet], None] | None = None  # writes `golden` and `corpus` from `sources`

    def unavailable(self) -> str | None:
        """Why this set cannot be run here, or None."""
        needed = self.sources if self.build else (*self.sources, self.golden, self.corpus)
        if self.sidecar is not None:
            needed = (*needed, self.sidecar)
        missing = [path for path in needed if not path.exists()]
        if missing:
            return f"{', '.join(_shown(path) for path in missing)} not found"
        return None

    def prepare(self) -> None:
        """Build the golden file and corpus folder of a generated set (again: cheap, and exact)."""
        if self.build is not None:
            self.build(self)

    def items(self) -> list[GoldenItem]:
        """The golden questions, with doc2dial's asked-back questions given their own kind."""
        items = golden_load(self.golden)
        if self.sidecar is None:
            return items
        asked_back = set()
        for number, line in enumerate(self.sidecar.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row["agent_asked_back"]:
                    asked_back.add(str(row["id"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise GoldenError(
                    f"{self.sidecar}:{number}: not an agent-reply line (id, agent_asked_back): {exc}"
                ) from None
        return [dataclasses.replace(item, kind=ASKED_BACK) if item.id in asked_back else item for item in items]


def _shown(path: Path) -> str:
    base = Path(settings.BASE_DIR)
    for root, name in ((base, ""), (base.parent, "../")):
        if path.is_relative_to(root):
            return name + str(path.relative_to(root))
    return str(path)


def shared_eval_dir() -> Path:
    """The third-party data sets, beside the checkout (read in place, never copied into the repository)."""
    return Path(settings.BASE_DIR).parent / "shared" / "eval"


def evaluation_sets() -> dict[str, EvaluationSet]:
    """Every named set, in the order reports show them."""
    base = Path(settings.BASE_DIR)
    golden = base / "tests" / "data" / "golden"
    doc2dial = shared_eval_dir() / "doc2dial"
    squad = shared_eval_dir() / "squad2-dev-cs224n"
    generated = Path(settings.KB_DATA_DIR) / "eval"
    sets = [
        EvaluationSet("demo", DEV, "kb's demo corpus and its golden set (kb was tuned on it)",
                      golden / "demo.jsonl", base / "ingest" / "demo"),
        EvaluationSet("blind-handbook", DEV, "a company handbook and employees' questions, written blind",
                      golden / "blind-handbook" / "golden.jsonl", golden / "blind-handbook" / "docs"),
        EvaluationSet("blind-clinic", DEV, "a second organisation's policies, written blind (a test set until "
                      "stop 25; its hard questions were read for the routing rules, so it became dev)",
                      golden / "blind-clinic" / "golden.jsonl", golden / "blind-clinic" / "docs"),
        EvaluationSet("blind-utility", TEST, "a third organisation's policies (a water utility), written blind; "
                      "nobody working on kb has read its questions", golden / "blind-utility" / "golden.jsonl",
                      golden / "blind-utility" / "docs"),
        EvaluationSet("blind-retail", DEV, "a retail chain's policies and shift workers' questions, written blind "
                      "(dev: read and learnt from)", golden / "blind-retail" / "golden.jsonl",
                      golden / "blind-retail" / "docs"),
        EvaluationSet("blind-software", TEST, "a software company's policies, written blind; nobody working on "
                      "kb has read its questions", golden / "blind-software" / "golden.jsonl",
                      golden / "blind-software" / "docs"),
        EvaluationSet("blind-hotel", DEV, "a hotel group's policies and its staff's questions, written blind (stop "
                      "39; measured once unseen, then dev)", golden / "blind-hotel" / "golden.jsonl",
                      golden / "blind-hotel" / "docs"),
        EvaluationSet("blind-council", DEV, "a city council's policies and its staff's questions, written blind "
                      "(stop 39; measured once unseen, then dev)", golden / "blind-council" / "golden.jsonl",
                      golden / "blind-council" / "docs"),
    ]  # fmt: skip
    for split, role in (("dev", DEV), ("test", TEST)):
        sets.append(
            EvaluationSet(
                f"doc2dial-{split}", role, f"doc2dial first user turns, {split} documents (all answerable)",
                doc2dial / f"golden-{split}.jsonl", doc2dial / "docs",
                sidecar=doc2dial / f"golden-{split}.agent-replies.jsonl",
            )
        )  # fmt: skip
    for split, role in (("dev", DEV), ("test", TEST)):
        sets.append(
            EvaluationSet(
                f"doc2dial-followup-{split}", role,
                f"doc2dial later turns after their dialogue so far, {split} documents",
                doc2dial / f"followup-{split}.jsonl", doc2dial / "docs",
            )
        )  # fmt: skip
    for split, role in (("dev", DEV), ("test", TEST)):
        folder = generated / f"squad-{split}"
        sets.append(
            EvaluationSet(
                f"squad-{split}", role,
                f"SQuAD 2.0, half of the articles ({split}); unanswerable questions are near misses",
                folder / "golden.jsonl", folder / "docs",
                sources=(squad / "passages.jsonl", squad / "qa.jsonl"), build=_squad_build,
            )
        )  # fmt: skip
    return {evaluation_set.name: evaluation_set for evaluation_set in sets}


def sets_select(names: Sequence[str] = (), *, role: str = "all") -> list[EvaluationSet]:
    """The named sets (all when none is named) that have the role; ValueError naming an unknown set."""
    known = evaluation_sets()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no evaluation set {', '.join(unknown)}: choose among {', '.join(known)}")
    chosen = [known[name] for name in names] if names else list(known.values())
    if role != "all":
        if role not in ROLES:
            raise ValueError(f"no role {role!r}: use dev, test or all")
        chosen = [evaluation_set for evaluation_set in chosen if evaluation_set.role == role]
    return chosen


# --- SQuAD 2.0 as a corpus folder and a golden file --------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.casefold()).strip("-")


def squad_split(titles: Sequence[str]) -> dict[str, str]:
    """Each article title's split: the sorted titles shuffled with SQUAD_SEED, the first half dev."""
    ordered = sorted(set(titles))
    random.Random(SQUAD_SEED).shuffle(ordered)
    half = len(ordered) // 2
    return {title: DEV if n < half else TEST for n, title in enumerate(ordered)}


def _squad_build(evaluation_set: EvaluationSet) -> None:
    passages_path, qa_path = evaluation_set.sources
    split = evaluation_set.name.removeprefix("squad-")
    passages = _jsonl(passages_path)
    splits = squad_split([p["title"] for p in passages])
    documents: dict[str, tuple[str, str]] = {}  # passage id -> (file name, its Markdown)
    for passage in passages:
        if splits[passage["title"]] != split:
            continue
        index = int(str(passage["_id"]).rpartition("#")[2])
        name = f"{_slug(passage['title'])}--{index:03d}.md"
        documents[passage["_id"]] = (name, f"# {passage['title']}\n\n{passage['text'].strip()}\n")
    questions = [q for q in _jsonl(qa_path) if q["passage_id"] in documents]
    sample = sorted(random.Random(SQUAD_SEED).sample(range(len(questions)), min(SQUAD_QUESTIONS, len(questions))))
    rows = []
    for position in sample:
        question = questions[position]
        answerable = not question["is_impossible"] and bool(question["answers"])
        first = question["answers"][0] if answerable else ""
        rows.append(
            {
                "id": f"squad-{question['id']}",
                "question": question["question"],
                "answerable": answerable,
                "doc": documents[question["passage_id"]][0] if answerable else None,
                "section": None,
                "answer": first,
                "must_include": [first] if answerable else [],
                "kind": "lookup" if answerable else NEAR_MISS,
            }
        )
    docs = evaluation_set.corpus
    docs.mkdir(parents=True, exist_ok=True)
    wanted = {name: text for name, text in documents.values()}
    for stale in docs.iterdir():
        if stale.name not in wanted:
            stale.unlink()  # a file left from another split or seed would change the corpus
    for name, text in wanted.items():
        _write_if_changed(docs / name, text)
    _write_if_changed(evaluation_set.golden, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
