"""CSV (and tab- or semicolon-separated) tables: the rows under their header row, read as a stream that stops at
the row limit; a file with no separator at all is plain text."""

from __future__ import annotations

import csv
import io
import itertools

from ingest.parsers.common import (
    CSV,
    BlockCollector,
    ParsedDocument,
    ParseError,
    add_table_rows,
    finish_document,
)
from ingest.parsers.decode import decode_text
from ingest.parsers.plain import parse_plain

# The dialect (separator, quoting) is guessed from the first lines; this many characters hold dozens of rows.
CSV_SNIFF_CHARS = 16 * 1024
CSV_DELIMITERS = ",;\t|"
# How many leading rows show whether the file has columns at all.
CSV_SHAPE_ROWS = 20


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS)
    except csv.Error:
        return csv.excel  # one column, or too irregular to guess: the common comma form


def parse_csv(data: bytes, *, max_rows: int) -> ParsedDocument:
    # No strip_invisible over the whole text: each cell is cleaned as it is read, and a file far over the row
    # limit must not be walked character by character before reading stops (a 36 MB CSV: 8 s -> 1 s).
    text = decode_text(data)
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text[:CSV_SNIFF_CHARS]))
    collector = BlockCollector()
    try:
        head = list(itertools.islice(reader, CSV_SHAPE_ROWS))
        if all(len([cell for cell in row if cell.strip()]) <= 1 for row in head):
            return parse_plain(data)  # no columns: prose or a list that happens to be named .csv
        add_table_rows(collector, itertools.chain(head, reader), max_rows=max_rows)
    except csv.Error as exc:
        raise ParseError(
            "corrupt_csv",
            f"The CSV file could not be read ({exc}, near line {reader.line_num}); open it in a spreadsheet, "
            "save it again as CSV and upload it.",
        ) from exc
    return finish_document(collector, CSV, title=None)
