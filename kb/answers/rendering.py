"""Answers as HTML: markdown through markdown-it-py (raw HTML off), `[n]` markers turned into links to the
cited passage, everything sanitized by nh3 (no script, no event handlers, no styles; links only http, https
and mailto, with rel="noopener noreferrer")."""

from __future__ import annotations

import re
from collections.abc import Callable

import nh3
from django.urls import reverse
from django.utils.html import escape
from markdown_it import MarkdownIt

from kb.guard.output import UNSUPPORTED

# Tables on: the extractive answer quotes a table row under its header as a small table (kb/llm/extractive.py).
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_MARKER = re.compile(r"\[(\d{1,4})\]")
ALLOWED_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h3", "h4", "h5", "h6", "hr",
    "sup", "span", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "class", "data-n", "data-panel", "aria-label"}, "span": {"class", "aria-label"}}


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )


def answer_html(markdown: str, citations: list[dict], exchange_id: int) -> str:
    """The answer's HTML; each valid `[n]` links to its passage (side panel with JavaScript, the document
    page at that passage without)."""
    by_n = {citation["n"]: citation for citation in citations}
    html = _markdown.render(markdown or "")

    def link(match: re.Match[str]) -> str:
        citation = by_n.get(int(match.group(1)))
        if citation is None:
            return ""  # a marker that names no cited passage is not shown as a source
        href = reverse("document_read", args=[citation["document_id"]]) + f"#chunk-{citation['chunk_id']}"
        panel = reverse("citation_panel", args=[exchange_id, citation["n"]])
        label = escape(f"Source {citation['n']}: {citation['title']}")
        return (
            f'<a class="cite" href="{href}" data-n="{citation["n"]}" data-panel="{panel}" '
            f'aria-label="{label}">[{citation["n"]}]</a>'
        )

    html = _MARKER.sub(link, html)
    # The grounding guard marks sentences that what they cite does not support (kb/guard/output.py).
    badge = (
        '<span class="unsupported" aria-label="Not supported by the cited passages">not supported by the sources</span>'
    )
    html = html.replace(UNSUPPORTED, badge)
    return sanitize(html)


# --- passages ----------------------------------------------------------------------------------------------------

# A table row in passage text, as the parsers write it (ingest/parsers/common.py, CELL_SEPARATOR): cells between
# pipes. Two or more such lines in a row are a table whose first line is its header (the chunker repeats it).
_ROW_LINE = re.compile(r"\S.*\|.*\S")
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# Private-use characters stand for the highlight's tags while the markdown renderer escapes everything else.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"


def passage_html(text: str, highlight: tuple[int, int] | None = None) -> str:
    """A passage (chunk text) as HTML for the reader, the source panel and search results: its tables as tables
    (through the same markdown renderer and sanitizer as answers), every other line as escaped text, and the
    `highlight` span of `text` inside <mark> (closed in each cell or line it covers, so the markup stays valid)."""

    def piece(start: int, end: int) -> str:
        if highlight is None or highlight[1] <= start or highlight[0] >= end or highlight[0] == highlight[1]:
            return text[start:end]
        low, high = max(start, highlight[0]), min(end, highlight[1])
        return text[start:low] + _MARK_OPEN + text[low:high] + _MARK_CLOSE + text[high:end]

    lines = []
    position = 0
    for line in text.split("\n"):
        lines.append((position, position + len(line)))
        position += len(line) + 1
    html: list[str] = []
    prose: list[str] = []

    def flush_prose() -> None:
        if prose:
            html.append("<p>" + "<br>".join(prose) + "</p>")
            prose.clear()

    index = 0
    while index < len(lines):
        run = index
        while run < len(lines) and _ROW_LINE.fullmatch(text[lines[run][0] : lines[run][1]].strip()):
            run += 1
        if run - index >= 2:
            flush_prose()
            html.append(_table_html([_row_cells(text, *line, piece) for line in lines[index:run]]))
            index = run
            continue
        start, end = lines[index]
        if text[start:end].strip():
            prose.append(escape(piece(start, end).strip()))
        else:
            flush_prose()
        index += 1
    flush_prose()
    rendered = "".join(html).replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>")
    return nh3.clean(rendered, tags=ALLOWED_TAGS | {"mark"}, attributes={})


def _row_cells(text: str, start: int, end: int, piece: Callable[[int, int], str]) -> list[str]:
    """The row's cells, each through `piece` (which marks the highlight) and trimmed."""
    cells = []
    line = text[start:end]
    # A leading and trailing pipe (Markdown style) frame the row; they separate nothing.
    cell_start = start
    for segment in line.split("|"):
        cell_end = cell_start + len(segment)
        left, right = cell_start, cell_end
        while left < right and text[left].isspace():
            left += 1
        while right > left and text[right - 1].isspace():
            right -= 1
        cells.append(piece(left, right))
        cell_start = cell_end + 1  # past the pipe
    if cells and not cells[0] and line.lstrip().startswith("|"):
        cells = cells[1:]
    if cells and not cells[-1] and line.rstrip().endswith("|"):
        cells = cells[:-1]
    return cells


def _table_html(rows: list[list[str]]) -> str:
    width = max(len(row) for row in rows)

    def line(cells: list[str]) -> str:
        cells = cells + [""] * (width - len(cells))
        return "| " + " | ".join(_MARKDOWN_PUNCTUATION.sub(r"\\\1", cell) for cell in cells) + " |"

    table = [line(rows[0]), "|" + " --- |" * width, *(line(row) for row in rows[1:])]
    # No newlines between the tags: passages may be shown with `white-space: pre-wrap`.
    return _markdown.render("\n".join(table)).replace(">\n<", "><").strip()
