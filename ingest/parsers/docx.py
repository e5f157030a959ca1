"""Word (.docx) files: checked for zip bombs from the zip directory before python-docx opens them."""

from __future__ import annotations

import io
import re
from typing import Any

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from ingest.parsers.common import (
    DOCX,
    LIST,
    LIST_INDENT,
    PARAGRAPH,
    TABLE,
    BlockCollector,
    ParsedDocument,
    ParseError,
    clean_inline,
    finish_document,
    open_office_zip,
    table_row,
)

_DOCX_HEADING_STYLE = re.compile(r"^heading\s+(\d)$", re.IGNORECASE)
# Styles inherit: a custom "Policy Heading" based on "Heading 2" is a level-2 heading.
DOCX_STYLE_INHERITANCE_DEPTH = 4


def _corrupt_docx() -> ParseError:
    return ParseError(
        "corrupt_docx",
        "The Word file is damaged or not really a .docx; open it in Word, save it again as .docx and upload it.",
    )


def _docx_heading_level(paragraph: Paragraph) -> int | None:
    style: Any = paragraph.style
    for _ in range(DOCX_STYLE_INHERITANCE_DEPTH):
        if style is None:
            return None
        name = style.name or ""
        if name.lower() == "title":
            return 1
        match = _DOCX_HEADING_STYLE.match(name)
        if match:
            return int(match.group(1))
        style = style.base_style
    return None


def _docx_list_level(paragraph: Paragraph) -> int | None:
    """The nesting level when the paragraph is a list item (numbering properties or a List style), else None."""
    p_pr = paragraph._p.pPr
    # python-docx types numPr loosely; its children are optional elements
    num_pr: Any = p_pr.numPr if p_pr is not None else None
    if num_pr is not None and num_pr.numId is not None and num_pr.numId.val != 0:
        return int(num_pr.ilvl.val) if num_pr.ilvl is not None else 0
    name = paragraph.style.name if paragraph.style is not None else ""
    if name and name.lower().startswith("list"):
        digits = re.search(r"(\d+)$", name)
        return int(digits.group(1)) - 1 if digits else 0
    return None


def _docx_table(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells = []
        previous = None
        for cell in row.cells:
            # merged cells come back once per grid column they span
            if cell._tc is previous:
                continue
            previous = cell._tc
            cells.append(cell.text)
        row_text = table_row(cells)
        if row_text:
            rows.append(row_text)
    return "\n".join(rows)


def parse_docx(data: bytes, *, max_uncompressed_bytes: int, max_ratio: int) -> ParsedDocument:
    open_office_zip(
        data,
        kind="Word file",
        main_part="word/document.xml",
        corrupt=_corrupt_docx(),
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_ratio=max_ratio,
    ).close()
    try:
        document = docx.Document(io.BytesIO(data))
        return _docx_document(document, list(document.iter_inner_content()))
    except ParseError:
        raise
    except Exception as exc:  # python-docx raises KeyError, ValueError, AttributeError, lxml errors... on damaged
        raise _corrupt_docx() from exc  # parts, some only when a paragraph's style or the properties are read


def _docx_document(document: Any, items: list[Any]) -> ParsedDocument:
    collector = BlockCollector()
    title = None
    list_lines: list[str] = []
    counters: dict[int, int] = {}

    def flush_list() -> None:
        if list_lines:
            collector.add(LIST, "\n".join(list_lines))
            list_lines.clear()
            counters.clear()

    for item in items:
        if isinstance(item, Table):
            flush_list()
            collector.add(TABLE, _docx_table(item))
            continue
        text = clean_inline(item.text)
        if not text:
            continue
        level = _docx_heading_level(item)
        if level is not None:
            flush_list()
            if title is None and item.style is not None and (item.style.name or "").lower() == "title":
                title = text
            collector.heading(text, level)
            continue
        list_level = _docx_list_level(item)
        if list_level is not None:
            style_name = (item.style.name or "") if item.style is not None else ""
            if "number" in style_name.lower():
                counters[list_level] = counters.get(list_level, 0) + 1
                marker = f"{counters[list_level]}."
            else:
                marker = "-"
            list_lines.append(f"{LIST_INDENT * list_level}{marker} {text}")
            continue
        flush_list()
        collector.add(PARAGRAPH, text)
    flush_list()
    core_title = clean_inline(document.core_properties.title or "")
    return finish_document(collector, DOCX, title=title or core_title or collector.first_h1)
