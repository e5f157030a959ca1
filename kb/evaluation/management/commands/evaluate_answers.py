"""manage.py evaluate_answers --golden F.jsonl [--corpus DIR|corpus.jsonl] [--models CHAIN] [--prompt V]
[--compare-prompt V] [--compare-models CHAIN] [--limit N] [--min METRIC=X] [--max METRIC=X] [--json]
[--output F.json] [--html F.html | --no-html]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from kb.evaluation.answers import metrics
from kb.evaluation.answers.corpus import CorpusError
from kb.evaluation.answers.golden import GoldenError
from kb.evaluation.answers.report import html_report
from kb.evaluation.answers.runner import Config, EvaluationError, evaluate, models_parse

DEFAULT_CORPUS = Path(settings.BASE_DIR) / "ingest" / "demo"
PROGRESS_EVERY = 25  # questions per progress line in a non-terminal log
# Shown in the text summary (the JSON and HTML reports hold every metric).
SUMMARY = (*metrics.QUALITY_METRICS, *metrics.COST_RATES, "latency_ms_p50", "latency_ms_p95", "cost_usd")


def _threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a threshold: write METRIC=NUMBER, e.g. must_include_recall=0.8"
        ) from None


class Command(BaseCommand):
    help = (
        "Evaluate answers on a golden question set: the whole ask pipeline on a corpus in an isolated index, "
        "scored for retrieval hits, citations, facts, refusals, injections, latency and cost; with --compare-*, "
        "two prompt versions or model chains side by side. Writes JSON and an HTML report."
    )

    def add_arguments(self, parser):
        parser.add_argument("--golden", required=True, type=Path, help="golden questions, one JSON object a line")
        parser.add_argument(
            "--corpus",
            type=Path,
            default=DEFAULT_CORPUS,
            help="a folder of documents, or a BEIR corpus.jsonl (default: the demo corpus, ingest/demo)",
        )
        parser.add_argument("--models", help="model chain for the run, as KB_MODELS (default: KB_MODELS)")
        parser.add_argument("--prompt", help="prompt version for the run (default: KB_PROMPT_VERSION)")
        parser.add_argument("--compare-prompt", help="a second configuration with this prompt version")
        parser.add_argument("--compare-models", help="a second configuration with this model chain")
        parser.add_argument("--limit", type=int, help="ask only the first N questions")
        parser.add_argument("--rebuild", action="store_true", help="drop the isolated index and build it again")
        parser.add_argument(
            "--min", action="append", default=[], type=_threshold, metavar="METRIC=X",
            help="fail (exit status 1) when a configuration's METRIC is below X or not measured; repeatable",
        )  # fmt: skip
        parser.add_argument(
            "--max", action="append", default=[], type=_threshold, metavar="METRIC=X",
            help="fail when a configuration's METRIC is above X or not measured; repeatable",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the report as JSON on stdout")
        parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
        parser.add_argument(
            "--html", type=Path, help="HTML report path (default: KB_DATA_DIR/eval/answers-<timestamp>.html)"
        )
        parser.add_argument("--no-html", action="store_true", help="write no HTML report")

    def handle(self, *args, golden: Path, corpus: Path, as_json: bool, **options):
        if not golden.is_file():
            raise CommandError(f"{golden}: no such file")
        try:
            base = Config(
                prompt=options["prompt"] or settings.KB_PROMPT_VERSION,
                models=models_parse(options["models"]) if options["models"] else tuple(settings.KB_MODELS),
            )
            configs = [base]
            if options["compare_prompt"] or options["compare_models"]:
                other = Config(
                    prompt=options["compare_prompt"] or base.prompt,
                    models=models_parse(options["compare_models"]) if options["compare_models"] else base.models,
                )
                if other == base:
                    raise EvaluationError("the comparison configuration is the same as the first one")
                configs.append(other)
            report = evaluate(
                golden,
                corpus,
                configs,
                limit=options["limit"],
                rebuild=options["rebuild"],
                log=self._log,
                progress=self._progress,
            )
        except (EvaluationError, GoldenError, CorpusError) as exc:
            raise CommandError(str(exc)) from None

        floors, ceilings = dict(options["min"]), dict(options["max"])
        failures = {
            c["label"]: metrics.threshold_failures(c["metrics"], floors=floors, ceilings=ceilings)
            for c in report["configs"]
        }
        if floors or ceilings:
            report["thresholds"] = {"floors": floors, "ceilings": ceilings, "failures": failures}
        if not options["no_html"]:
            path = options["html"] or (
                Path(settings.KB_DATA_DIR) / "eval" / f"answers-{timezone.now():%Y%m%d-%H%M%S}.html"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(html_report(report, failures=failures), encoding="utf-8")
            report["html"] = str(path)
            self._log(f"HTML report: {path}")
        text = json.dumps(report, indent=2, ensure_ascii=False)
        if options["output"]:
            options["output"].parent.mkdir(parents=True, exist_ok=True)
            options["output"].write_text(text + "\n", encoding="utf-8")
        self.stdout.write(text if as_json else _summary(report))
        broken = [f"{label}: {problem}" for label, problems in failures.items() for problem in problems]
        if broken:
            raise CommandError("thresholds broken:\n  " + "\n  ".join(broken))

    def _log(self, message: str) -> None:
        self.stderr.write(message)

    def _progress(self, label: str, done: int, total: int) -> None:
        progress_write(self.stderr, label, done, total)


def progress_write(stderr, label: str, done: int, total: int) -> None:
    """One rewritten line on a terminal, a line every PROGRESS_EVERY questions in a log (stderr)."""
    if sys.stderr.isatty():
        stderr.write(f"\r{label}: {done}/{total}", ending="" if done < total else "\n")
        stderr.flush()
    elif done == total or done % PROGRESS_EVERY == 0:
        stderr.write(f"{label}: {done}/{total}")


def _summary(report: dict) -> str:
    configs = report["configs"]
    index = report["corpus"]["index"]
    width = max(24, *(len(c["prompt_version"]) + 2 for c in configs))
    lines = [
        f"{report['golden']['questions']} questions on {index['documents']} documents ({index['chunks']} passages), "
        f"index {index['database']}",
        "",
        f"{'metric':<24}" + "".join(f"{c['prompt_version']:>{width}}" for c in configs),
        f"{'':<24}" + "".join(f"{','.join(c['models'])[: width - 2]:>{width}}" for c in configs),
    ]
    for name in SUMMARY:
        values = [c["metrics"].get(name) for c in configs]
        lines.append(f"{name:<24}" + "".join(f"{'-' if v is None else v:>{width}}" for v in values))
    if not report["guard"]["available"]:
        lines.append(f"\ninjection_block_rate {report['guard']['note']}")
    if report.get("html"):
        lines.append(f"\nHTML report: {report['html']}")
    return "\n".join(lines)
