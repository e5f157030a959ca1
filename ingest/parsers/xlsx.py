"""Excel (.xlsx) workbooks: one section per worksheet, its rows as table rows under their header row, formulas as
the values Excel last computed, read in a streaming mode that stops at the row limit."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openpyxl

from ingest.parsers.common import (
    XLSX,
    BlockCollector,
    ParsedDocument,
    ParseError,
    add_table_rows,
    finish_document,
    open_office_zip,
)

SHEET_LEVEL = 1
# Floats are shown with this many significant digits: enough for money and measurements, without the binary
# noise of 0.1 + 0.2 = 0.30000000000000004.
FLOAT_DIGITS = 12


def _corrupt_xlsx() -> ParseError:
    return ParseError(
        "corrupt_xlsx",
        "The Excel file is damaged or not really a .xlsx; open it in Excel, save it again as .xlsx and upload it.",
    )


def cell_text(value: Any, number_format: str = "General") -> str:
    """A cell's value as Excel shows it, in the ways that matter for reading: percentages, dates, whole numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ", timespec="minutes")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, int | float | Decimal):
        if "%" in (number_format or ""):
            return f"{float(value) * 100:.{FLOAT_DIGITS}g}%"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return f"{value:.{FLOAT_DIGITS}g}" if isinstance(value, float) else str(value)
    return str(value)


def _rows(sheet: Any) -> Iterator[list[str]]:
    # The sheet's declared size (<dimension>) is not trusted: read-only mode pads every row to it, so one cell in
    # column XFD of row 1,000,000 would make a 5 KB file take hours. Rows are read as the file holds them.
    sheet.reset_dimensions()
    for row in sheet.iter_rows():
        yield [cell_text(cell.value, getattr(cell, "number_format", "General")) for cell in row]


def parse_xlsx(data: bytes, *, max_uncompressed_bytes: int, max_ratio: int, max_rows: int) -> ParsedDocument:
    open_office_zip(
        data,
        kind="Excel file",
        main_part="xl/workbook.xml",
        corrupt=_corrupt_xlsx(),
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_ratio=max_ratio,
    ).close()
    collector = BlockCollector()
    seen = 0
    try:
        # read_only streams rows without building the whole sheet; data_only gives a formula's cached value.
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises KeyError, ValueError, lxml and zip errors on damaged parts
        raise _corrupt_xlsx() from exc
    try:
        for sheet in workbook.worksheets:
            collector.heading(sheet.title, SHEET_LEVEL)
            before = len(collector.blocks)
            seen = add_table_rows(collector, _rows(sheet), max_rows=max_rows, rows_before=seen)
            if len(collector.blocks) == before:
                collector.blocks.pop()  # an empty sheet is no section (and a workbook of them has no text)
        title = (workbook.properties.title or "").strip() or None
    except ParseError:
        raise
    except Exception as exc:
        raise _corrupt_xlsx() from exc
    finally:
        workbook.close()
    return finish_document(collector, XLSX, title=title, page_count=None)
