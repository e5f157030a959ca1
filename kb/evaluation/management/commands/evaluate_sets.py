"""manage.py evaluate_sets [--sets NAME,...] [--role dev|test|all] [--models CHAIN] [--prompt V] [--limit N]
[--rebuild] [--output F.json] [--html F.html] [--json]"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kb.evaluation.answers import metrics
from kb.evaluation.answers.corpus import CorpusError
from kb.evaluation.answers.golden import GoldenError
from kb.evaluation.answers.report import sets_html_report
from kb.evaluation.answers.runner import Config, EvaluationError, evaluate_sets, models_parse
from kb.evaluation.answers.sets import evaluation_sets, sets_select
from kb.evaluation.management.commands.evaluate_answers import progress_write


class Command(BaseCommand):
    help = (
        "Evaluate answers on several named evaluation sets (golden questions on their corpus, each dev or test) "
        "with one model chain, and write one report with the sets side by side. Sets whose files are absent "
        f"are skipped, saying why. Sets: {', '.join(evaluation_sets())}."
    )

    def add_arguments(self, parser):
        parser.add_argument("--sets", default="", help="comma-separated set names (default: every set of --role)")
        parser.add_argument(
            "--role", choices=("dev", "test", "all"), default="all",
            help="only sets of this role: dev (may be tuned on), test (never tuned on), or all (default)",
        )  # fmt: skip
        parser.add_argument("--models", default="extractive", help="model chain, as KB_MODELS (default: extractive)")
        parser.add_argument("--prompt", help="prompt version (default: KB_PROMPT_VERSION)")
        parser.add_argument("--limit", type=int, help="ask only the first N questions of each set")
        parser.add_argument("--rebuild", action="store_true", help="drop the sets' isolated indexes and build again")
        parser.add_argument(
            "--output", type=Path,
            help="the JSON report (default: KB_DATA_DIR/bench/answer_sets.json); each set's full report goes in a "
            "folder named after it (answer_sets/<set>.json and .html)",
        )  # fmt: skip
        parser.add_argument("--html", type=Path, help="the HTML report (default: the JSON report's path, .html)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the report as JSON on stdout")

    def handle(self, *args, as_json: bool, **options):
        output = options["output"] or Path(settings.KB_DATA_DIR) / "bench" / "answer_sets.json"
        html = options["html"] or output.with_suffix(".html")
        names = [name.strip() for name in options["sets"].split(",") if name.strip()]
        try:
            chosen = sets_select(names, role=options["role"])
            if not chosen:
                raise EvaluationError(f"no set named has the role {options['role']}: leave out --role or --sets")
            config = Config(
                prompt=options["prompt"] or settings.KB_PROMPT_VERSION, models=models_parse(options["models"])
            )
            report = evaluate_sets(
                chosen,
                config,
                reports_dir=output.with_suffix(""),
                limit=options["limit"],
                rebuild=options["rebuild"],
                log=self._log,
                progress=self._progress,
            )
        except (ValueError, EvaluationError, GoldenError, CorpusError) as exc:
            raise CommandError(str(exc)) from None
        output.parent.mkdir(parents=True, exist_ok=True)
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(sets_html_report(report), encoding="utf-8")
        report["html"] = str(html)
        text = json.dumps(report, indent=2, ensure_ascii=False)
        output.write_text(text + "\n", encoding="utf-8")
        self._log(f"reports: {output}, {html}")
        self.stdout.write(text if as_json else _summary(report))

    def _log(self, message: str) -> None:
        self.stderr.write(message)

    def _progress(self, label: str, done: int, total: int) -> None:
        progress_write(self.stderr, label, done, total)


def _summary(report: dict) -> str:
    sets = report["sets"]
    width = max(14, *(len(name) + 2 for name in sets))
    lines = [
        f"{'':<24}" + "".join(f"{name:>{width}}" for name in sets),
        f"{'role':<24}" + "".join(f"{s['role']:>{width}}" for s in sets.values()),
    ]
    for row in metrics.SET_ROWS:
        values = [s["metrics"].get(row) for s in sets.values()]
        lines.append(f"{row:<24}" + "".join(f"{'-' if v is None else v:>{width}}" for v in values))
    lines.append(f"{'run_s':<24}" + "".join(f"{s['runtime_s']:>{width}}" for s in sets.values()))
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    lines.append(f"\nHTML report: {report['html']}")
    return "\n".join(lines)
