"""Tables stay tables in every format that has them: parsed as rows under their header, and no passage cuts a
row; every passage holding rows of a table but not its start repeats the header row."""

from __future__ import annotations

import io

import pytest

from ingest.chunker import chunk_document
from ingest.parsers import CSV, DOCX, HTML, MARKDOWN, PARAGRAPH, PDF, PPTX, TABLE, XLSX, parse
from tests.ingest import fixtures_build as build

HEADER = ["Case", "Decision", "Owner"]
# Cells with sentences inside: the overlap between passages is taken on sentences, and must not start in a cell.
ROWS = [[f"C{n}", f"Approved by Dr. Smith. Paid on day {n}. Filed.", f"Team {n}"] for n in range(40)]


def markdown_table() -> bytes:
    lines = ["# Cases", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in ROWS]
    return "\n".join(lines).encode()


def html_table() -> bytes:
    rows = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in ROWS)
    head = "<tr>" + "".join(f"<th>{cell}</th>" for cell in HEADER) + "</tr>"
    return f"<!DOCTYPE html><html><body><h1>Cases</h1><table>{head}{rows}</table></body></html>".encode()


def docx_table() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Cases", 1)
    table = document.add_table(rows=len(ROWS) + 1, cols=len(HEADER))
    for r, row in enumerate([HEADER, *ROWS]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_table() -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Cases"
    table = slide.shapes.add_table(len(ROWS) + 1, len(HEADER), Inches(0.5), Inches(1.5), Inches(9), Inches(5)).table
    for r, row in enumerate([HEADER, *ROWS]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_table() -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Cases"
    for row in [HEADER, *ROWS]:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def csv_table() -> bytes:
    import csv

    out = io.StringIO()
    csv.writer(out).writerows([HEADER, *ROWS])
    return out.getvalue().encode()


FORMATS = [
    (MARKDOWN, markdown_table),
    (HTML, html_table),
    (DOCX, docx_table),
    (PPTX, pptx_table),
    (XLSX, xlsx_table),
    (CSV, csv_table),
]


@pytest.mark.parametrize(("media_type", "make"), FORMATS, ids=[make.__name__ for _, make in FORMATS])
def test_no_passage_cuts_a_row_and_each_repeats_the_header(media_type, make):
    doc = parse(make(), media_type)
    tables = [block for block in doc.blocks if block.kind == TABLE]
    assert len(tables) == 1
    header_line = " | ".join(HEADER)
    row_lines = tables[0].text.split("\n")
    assert row_lines[0] == header_line and len(row_lines) == len(ROWS) + 1
    assert row_lines[1] == " | ".join(ROWS[0])
    chunks = chunk_document(doc, target_tokens=80, max_tokens=100, overlap_tokens=30)
    holding_rows = [chunk for chunk in chunks if any(line.startswith("C") for line in chunk.text.split("\n"))]
    assert len(holding_rows) >= 4
    for chunk in holding_rows:
        lines = chunk.text.split("\n")
        assert lines[0] == header_line, chunk.text
        assert all(line in row_lines for line in lines), chunk.text  # whole rows only
    # Every row is in some passage.
    assert {line for chunk in holding_rows for line in chunk.text.split("\n")} == set(row_lines)


def test_a_wide_sheets_passages_repeat_its_header_within_the_passage_budget():
    import openpyxl

    columns = [f"Quarterly figure {n}" for n in range(16)]  # a header of ~70 tokens
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(columns)
    for row in range(60):
        sheet.append([f"v{row}-{n}" for n in range(16)])
    out = io.BytesIO()
    workbook.save(out)
    doc = parse(out.getvalue(), XLSX)
    header_line = " | ".join(columns)
    chunks = chunk_document(doc, target_tokens=180, max_tokens=210, overlap_tokens=24)
    assert len(chunks) >= 10
    for chunk in chunks:
        assert chunk.text.startswith(header_line + "\n"), chunk.text[:200]
        # The header counts against the budget: the passage still fits what the model reads (256 tokens).
        assert chunk.token_count <= 180 + 24, chunk.token_count


def test_no_passage_is_only_a_header_row():
    """A first row too long to join its header: the header goes with that row's passage (it is repeated there),
    never alone as a passage of column names."""
    import csv

    out = io.StringIO()
    long_details = " ".join(f"clause{n} applies to all staff" for n in range(25))
    rows = [["Policy", "Owner", "Details"], ["Travel", "Finance", long_details], ["Leave", "HR", "x"]]
    csv.writer(out).writerows(rows)
    doc = parse(out.getvalue().encode(), CSV)
    chunks = chunk_document(doc, target_tokens=80, max_tokens=100, overlap_tokens=20)
    assert chunks and all(chunk.text.strip() != "Policy | Owner | Details" for chunk in chunks), [
        chunk.text for chunk in chunks
    ]
    assert any("Leave | HR | x" in chunk.text for chunk in chunks)


def test_a_pdf_tables_rows_are_a_table_under_their_header():
    """The text layer's table (cells placed in columns) is a table block: pypdf's plain text joins the cells of a
    row with spaces, its layout text keeps the columns apart."""
    rows = [("City", "Meals per day", "Hotel per night")]
    rows += [(f"City {n}", f"{40 + n} EUR", f"{150 + n} EUR") for n in range(30)]
    page = ["Daily allowances", "", "Allowances per city are listed below.", *rows, "", "Ask the travel desk."]
    doc = parse(build.build_pdf([page]), PDF)
    tables = [block for block in doc.blocks if block.kind == TABLE]
    assert len(tables) == 1 and tables[0].page == 1
    lines = tables[0].text.split("\n")
    assert lines[:2] == ["City | Meals per day | Hotel per night", "City 0 | 40 EUR | 150 EUR"] and len(lines) == 31
    assert any(block.kind == PARAGRAPH and "travel desk" in block.text for block in doc.blocks)
    chunks = chunk_document(doc, target_tokens=60, max_tokens=80, overlap_tokens=20)
    holding = [chunk.text.split("\n") for chunk in chunks if "EUR" in chunk.text]
    assert len(holding) >= 2
    for chunk_lines in holding:  # each passage of the table has the header above its first row
        first_row = next(i for i, line in enumerate(chunk_lines) if line.startswith("City ") and "EUR" in line)
        assert lines[0] in chunk_lines[:first_row], chunk_lines


def test_wide_word_gaps_that_do_not_line_up_are_not_a_table():
    page = ["Staff   may   claim meals", "only when   travelling far from   the office.", "Receipts are kept."]
    doc = parse(build.build_pdf([page]), PDF)
    assert [block.kind for block in doc.blocks] == [PARAGRAPH]
