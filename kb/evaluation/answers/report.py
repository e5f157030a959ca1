"""The evaluation report as one self-contained HTML page: no script, no external file; every text escaped."""

from __future__ import annotations

from html import escape

from kb.evaluation.answers.metrics import COST_RATES, QUALITY_METRICS

COLOURS = ("#2b6cb0", "#dd6b20", "#2f855a", "#9b2c2c")  # one per configuration, readable on white
# Columns of the per-kind tables.
KIND_COLUMNS = (
    "questions",
    "hit_at_k",
    "citation_precision",
    "cited_answer_rate",
    "must_include_recall",
    "context_recall",
    "answer_f1",
    "refusal_recall",
    "false_refusal_rate",
    "injection_block_rate",
    "latency_ms_p50",
)
ANSWER_PREVIEW_CHARS = 300

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1a202c; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #cbd5e0; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #edf2f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.worse { color: #9b2c2c; font-weight: 600; } .better { color: #2f855a; font-weight: 600; }
.note { background: #fefcbf; padding: .5rem .75rem; border-left: 4px solid #d69e2e; }
.fail { background: #fed7d7; padding: .5rem .75rem; border-left: 4px solid #9b2c2c; }
.answer { max-width: 480px; white-space: pre-wrap; font-size: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; } dt { font-weight: 600; }
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _number(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _scalars(metrics: dict) -> list[str]:
    return [name for name, value in metrics.items() if not isinstance(value, dict)]


def metrics_table(configs: list[dict]) -> str:
    head = "".join(f"<th>{_e(c['label'])}</th>" for c in configs)
    delta_head = "<th>change</th>" if len(configs) == 2 else ""
    rows = []
    names = _scalars(configs[0]["metrics"])
    for name in names:
        values = [c["metrics"].get(name) for c in configs]
        cells = "".join(f'<td class="num">{_e(_number(v))}</td>' for v in values)
        if len(configs) == 2:
            cells += _delta_cell(name, values[0], values[1])
        rows.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    for group in ("tokens", "outcomes"):
        keys = sorted({key for c in configs for key in c["metrics"].get(group, {})})
        for key in keys:
            values = [c["metrics"].get(group, {}).get(key, 0) for c in configs]
            cells = "".join(f'<td class="num">{_e(_number(v))}</td>' for v in values)
            if len(configs) == 2:
                cells += _delta_cell(key, values[0], values[1])
            rows.append(f"<tr><th>{_e(group)}: {_e(key)}</th>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}{delta_head}</tr>{''.join(rows)}</table>"


def _delta_cell(name: str, first: object, second: object) -> str:
    if not isinstance(first, int | float) or not isinstance(second, int | float):
        return "<td></td>"
    delta = round(second - first, 4)
    css = ""
    if delta and name in QUALITY_METRICS:
        css = "better" if delta > 0 else "worse"
    elif delta and name in COST_RATES:
        css = "worse" if delta > 0 else "better"
    return f'<td class="num {css}">{_e(f"{delta:+g}")}</td>'


def chart_svg(configs: list[dict]) -> str:
    """Horizontal bars: each rate metric (0..1), one bar per configuration, labelled by prompt version."""
    names = [*QUALITY_METRICS, *COST_RATES]
    bar, gap, label_width, plot_width, top = 14, 10, 200, 460, 20 + 18 * len(configs)
    group = bar * len(configs) + gap
    height = top + group * len(names) + 10
    width = label_width + plot_width + 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="metrics per prompt version" font-family="system-ui, sans-serif" font-size="12">'
    ]
    for j, config in enumerate(configs):
        colour = COLOURS[j % len(COLOURS)]
        parts.append(f'<rect x="{label_width}" y="{4 + 18 * j}" width="12" height="12" fill="{colour}"/>')
        parts.append(
            f'<text x="{label_width + 18}" y="{14 + 18 * j}">{_e(config["prompt_version"])} '
            f"({_e(', '.join(config['models']))})</text>"
        )
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_width + tick * plot_width
        parts.append(f'<line x1="{x}" y1="{top - 4}" x2="{x}" y2="{height - 10}" stroke="#e2e8f0"/>')
    for i, name in enumerate(names):
        y0 = top + i * group
        parts.append(
            f'<text x="{label_width - 6}" y="{y0 + bar * len(configs) / 2 + 4}" text-anchor="end">{_e(name)}</text>'
        )
        for j, config in enumerate(configs):
            value = config["metrics"].get(name)
            y = y0 + j * bar
            if value is None:
                parts.append(f'<text x="{label_width + 4}" y="{y + bar - 3}" fill="#718096">not measured</text>')
                continue
            length = max(0.0, min(1.0, float(value))) * plot_width
            colour = COLOURS[j % len(COLOURS)]
            parts.append(f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar - 2}" fill="{colour}"/>')
            parts.append(f'<text x="{label_width + length + 4:.1f}" y="{y + bar - 3}">{_e(_number(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def kinds_table(config: dict) -> str:
    head = "".join(f"<th>{_e(name)}</th>" for name in KIND_COLUMNS)
    rows = []
    for kind, values in config["per_kind"].items():
        cells = "".join(f'<td class="num">{_e(_number(values.get(name)))}</td>' for name in KIND_COLUMNS)
        rows.append(f"<tr><th>{_e(kind)}</th>{cells}</tr>")
    return f"<table><tr><th>kind</th>{head}</tr>{''.join(rows)}</table>"


def questions_table(config: dict) -> str:
    rows = []
    for q in config["questions"]:
        cited = ", ".join(f"[{c['n']}] {c['document']}" for c in q["citations"])
        missing = "; ".join(
            f"{fact} (not in the passages)" if fact in q["context_facts"]["missing"] else fact
            for fact in q["must_include"]["missing"]
        )
        answer = q["answer"] if len(q["answer"]) <= ANSWER_PREVIEW_CHARS else q["answer"][:ANSWER_PREVIEW_CHARS] + "…"
        flags = " (prompt leaked)" if q["leaked_prompt"] else ""
        rows.append(
            "<tr>"
            f"<td>{_e(q['id'])}</td><td>{_e(q['kind'])}</td><td>{_e(q['question'])}</td>"
            f'<td>{_e(q["outcome"])}{_e(flags)}</td><td class="num">{_e(_number(q["hit_rank"]))}</td>'
            f'<td>{_e(cited)}</td><td>{_e(missing)}</td><td class="num">{_e(_number(q["latency_ms"]))}</td>'
            f'<td class="answer">{_e(answer or q["error"])}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{name}</th>"
        for name in ("id", "kind", "question", "outcome", "hit rank", "cited", "facts missing", "ms", "answer")
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def html_report(report: dict, *, failures: dict[str, list[str]] | None = None) -> str:
    configs = report["configs"]
    golden, corpus = report["golden"], report["corpus"]
    index = corpus["index"]
    facts = [
        ("golden set", f"{golden['path']} ({golden['questions']} questions: "
         + ", ".join(f"{kind} {count}" for kind, count in golden["kinds"].items()) + ")"),
        ("corpus", f"{corpus['path']} ({index['documents']} documents, {index['chunks']} passages)"),
        ("isolated index", index["database"]),
        ("passages per answer (k)", report["k"]),
        ("evidence gate", report["settings"]["evidence_min_score"]),
        ("answer cache, budgets", "off during the run"),
        ("run", f"{report['started_at']}, {report['runtime_s']} s"),
    ]  # fmt: skip
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Answer evaluation: {_e(golden['path'])}</title><style>{STYLE}</style></head><body>",
        "<h1>Answer evaluation</h1>",
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>",
    ]
    if not report["guard"]["available"]:
        parts.append(f"<p class='note'>Injection block rate {_e(report['guard']['note'])}.</p>")
    for label, problems in (failures or {}).items():
        if problems:
            items = "".join(f"<li>{_e(problem)}</li>" for problem in problems)
            parts.append(f"<div class='fail'><strong>Thresholds broken by {_e(label)}</strong><ul>{items}</ul></div>")
    parts += [
        "<h2>Metrics</h2>",
        metrics_table(configs),
        "<h2>Metrics per prompt version</h2>",
        chart_svg(configs),
    ]
    for config in configs:
        parts += [f"<h2>Per kind: {_e(config['label'])}</h2>", kinds_table(config)]
    for config in configs:
        parts += [
            f"<details><summary>Every question: {_e(config['label'])}</summary>",
            questions_table(config),
            "</details>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def sets_html_report(report: dict) -> str:
    """`evaluate_sets`' report: the sets side by side (dev and test marked), then each set's kinds."""
    sets = report["sets"]
    names = list(sets)
    head = "".join(f"<th>{_e(name)}<br><small>{_e(sets[name]['role'])}</small></th>" for name in names)
    rows = [
        "<tr><th>documents (passages)</th>"
        + "".join(
            f'<td class="num">{sets[n]["corpus"]["documents"]} ({sets[n]["corpus"]["chunks"]})</td>' for n in names
        )
        + "</tr>"
    ]
    for name in report["rows"]:
        cells = "".join(f'<td class="num">{_e(_number(sets[n]["metrics"].get(name)))}</td>' for n in names)
        rows.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
    for label, key in (("index build (s)", "build_s"), ("run (s)", None)):
        cells = "".join(
            f'<td class="num">{_e(_number(sets[n]["corpus"][key] if key else sets[n]["runtime_s"]))}</td>'
            for n in names
        )
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    config = report["config"]
    limited = f"; the first {report['limit']} questions of each set" if report["limit"] else ""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Answer evaluation: sets side by side</title><style>{STYLE}</style></head><body>",
        "<h1>Answer evaluation: sets side by side</h1>",
        f"<p>{_e(config['prompt_version'])} · {_e(', '.join(config['models']))}; {_e(report['started_at'])}, "
        f"{_e(report['runtime_s'])} s{_e(limited)}."
        " A <em>test</em> set is never tuned on: its figures are the evidence; a <em>dev</em> set's are not.</p>",
        f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>",
    ]
    if report["skipped"]:
        items = "".join(f"<li>{_e(name)}: {_e(reason)}</li>" for name, reason in report["skipped"].items())
        parts.append(f"<div class='note'><strong>Skipped</strong><ul>{items}</ul></div>")
    for name in names:
        parts += [
            f"<h2>Per kind: {_e(name)} ({_e(sets[name]['role'])})</h2>",
            f"<p>{_e(sets[name]['description'])}; every question: {_e(sets[name]['report'])}</p>",
            kinds_table(sets[name]),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
