"""PowerPoint, Excel, CSV and e-mail: real files made here with python-pptx, openpyxl, XlsxWriter and the `email`
package, good and bad, parsed without the database."""

from __future__ import annotations

import io
import zipfile

import openpyxl
import pytest

from ingest.parsers import CSV, EML, LIST, PARAGRAPH, PLAIN, PPTX, TABLE, XLSX, ParseError, parse, sniff_media_type
from ingest.parsers.xlsx import cell_text
from tests.ingest import fixtures_build as build
from tests.ingest.test_parsers import assert_offsets_match, assert_readable, parse_error, sniff_error


def blocks_of(doc, kind: str) -> list:
    return [block for block in doc.blocks if block.kind == kind]


# --- PowerPoint -----------------------------------------------------------------------------------------------


def test_a_deck_is_one_section_per_slide_with_its_slide_number_as_page():
    data = build.build_pptx()
    assert sniff_media_type(data, "review.pptx") == PPTX
    assert sniff_media_type(data, "review") == PPTX
    doc = parse(data, PPTX)
    assert_offsets_match(doc)
    assert doc.title == "Quarterly Review" and doc.page_count == 3
    headings = [(block.text, block.page) for block in doc.blocks if block.kind == "heading"]
    assert headings == [("Quarterly Review Q3", 1), ("Travel budget", 2), ("Notes", 2), ("Per diem by city", 3)]
    bullets = blocks_of(doc, LIST)[0]
    assert bullets.heading_path == ("Travel budget",)
    assert bullets.text.split("\n") == [
        "- Train travel is preferred under four hours",
        "  - First class only over three hours",
        "- Hotels capped at 180 euros",
    ]
    notes = next(block for block in doc.blocks if "Remind managers" in block.text)
    assert notes.heading_path == ("Travel budget", "Notes") and notes.page == 2
    table = blocks_of(doc, TABLE)[0]
    assert table.text.split("\n")[:2] == ["City | Meals | Hotel", "London | £55 | £210"]
    assert table.page == 3


def test_a_slide_with_only_a_title_keeps_its_title_as_text():
    from pptx import Presentation

    deck = Presentation()
    deck.slides.add_slide(deck.slide_layouts[5]).shapes.title.text = "Revenue grew 12 percent"
    out = io.BytesIO()
    deck.save(out)
    doc = parse(out.getvalue(), PPTX)
    assert [block.text for block in blocks_of(doc, PARAGRAPH)] == ["Revenue grew 12 percent"]
    assert doc.title == "Revenue grew 12 percent"


def test_a_pptx_zip_bomb_is_refused_from_the_directory():
    error = parse_error(build.build_pptx_bomb(300 * 1024 * 1024), PPTX)
    assert error.code == "zip_bomb" and "PowerPoint" in error.message


def test_a_damaged_pptx_is_corrupt():
    damaged = build.build_pptx()[:3000]
    assert sniff_media_type(damaged, "deck.pptx") == PPTX
    assert parse_error(damaged, PPTX).code == "corrupt_pptx"
    broken = build.build_zip({"[Content_Types].xml": b"<Types/>", "ppt/presentation.xml": b"<not xml"})
    assert parse_error(broken, PPTX).code == "corrupt_pptx"


def test_a_deck_of_blank_slides_has_no_text():
    from pptx import Presentation

    deck = Presentation()
    deck.slides.add_slide(deck.slide_layouts[6])  # blank layout
    out = io.BytesIO()
    deck.save(out)
    assert parse_error(out.getvalue(), PPTX).code == "no_text"


# --- Excel ------------------------------------------------------------------------------------------------------


def test_a_workbook_is_one_section_per_sheet_with_rows_under_their_header():
    data = build.build_xlsx()
    assert sniff_media_type(data, "budget.xlsx") == XLSX
    doc = parse(data, XLSX)
    assert_offsets_match(doc)
    assert doc.title == "Budget 2025"
    title_line, expenses, headcount = doc.blocks[1], doc.blocks[2], doc.blocks[4]
    assert (title_line.kind, title_line.text) == (PARAGRAPH, "Travel expenses 2025")
    assert expenses.kind == TABLE and expenses.heading_path == ("Expenses",)
    # whole numbers without ".0", a percentage as Excel shows it
    assert expenses.text.split("\n") == [
        "City | Meals | Hotel | Share",
        "London | 55 | 210 | 25%",
        "Paris | 55 | 210 | 25%",
        "Berlin | 55 | 210 | 25%",
    ]
    assert headcount.heading_path == ("Headcount",) and headcount.text.endswith("Sales | 40")


def test_a_formula_is_read_as_the_value_excel_computed():
    doc = parse(build.build_xlsx_with_cached_formula(), XLSX)
    assert "Total | 235" in doc.text
    assert "SUM" not in doc.text


@pytest.mark.parametrize(
    ("value", "number_format", "shown"),
    [(None, "General", ""), (True, "General", "TRUE"), (3.0, "General", "3"), (0.1 + 0.2, "General", "0.3"),
     (0.075, "0.0%", "7.5%"), (12, "General", "12")],
)  # fmt: skip
def test_cell_values_read_as_excel_shows_them(value, number_format, shown):
    assert cell_text(value, number_format) == shown


def test_a_sheet_over_the_row_limit_is_refused_naming_the_limit():
    data = build.build_xlsx(rows_per_sheet=300)
    error = parse_error(data, XLSX, max_table_rows=200)
    assert error.code == "too_many_rows"
    assert "200" in error.message and "KB_MAX_TABLE_ROWS" in error.message and "split" in error.message
    assert parse(data, XLSX, max_table_rows=400).text.count("London") >= 60


def test_a_password_protected_workbook_says_so():
    secret = build.encrypt_office(build.build_xlsx(), "hunter2")
    for name in ("budget.xlsx", "budget"):
        error = sniff_error(secret, name)
        assert error.code == "encrypted_office" and "password" in error.message


def test_a_damaged_or_bomb_xlsx_fails_clearly():
    assert parse_error(build.build_xlsx()[:2000], XLSX).code == "corrupt_xlsx"
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/workbook.xml", b"\x00" * (50 * 1024 * 1024))
    assert parse_error(bomb.getvalue(), XLSX).code == "zip_bomb"


def test_an_empty_workbook_has_no_text():
    import openpyxl

    out = io.BytesIO()
    openpyxl.Workbook().save(out)
    error = parse_error(out.getvalue(), XLSX)
    assert error.code == "no_text"


# --- CSV -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_a_csv_is_a_table_under_its_header_whatever_the_separator(delimiter):
    data = build.build_csv(3, delimiter=delimiter)
    assert sniff_media_type(data, "leave.csv") == CSV
    doc = parse(data, CSV)
    assert_offsets_match(doc)
    assert [block.kind for block in doc.blocks] == [TABLE]
    assert doc.text.split("\n")[:2] == [
        "Employee | Department | Start date | Days of leave",
        "Person 0 | Sales | 2024-01-15 | 20",
    ]


def test_csv_quoting_and_pipes_inside_cells_keep_the_columns():
    data = b'Name,Note\n"Smith, Jane","a | b"\n"Lee","line one\nline two"\n'
    doc = parse(data, CSV)
    assert doc.text.split("\n") == ["Name | Note", "Smith, Jane | a / b", "Lee | line one line two"]


def test_a_million_row_csv_is_refused_at_the_limit_without_reading_it_all():
    import time

    data = build.build_csv(1_000_000)
    started = time.perf_counter()
    error = parse_error(data, CSV, max_table_rows=50_000)
    assert error.code == "too_many_rows" and "50,000" in error.message
    # Stops at the limit: decoding the 40 MB is most of the time, not a million rows.
    assert time.perf_counter() - started < 10


def test_a_csv_without_columns_is_read_as_text():
    doc = parse(b"Parking rules\n\nThe garage closes at 22:00 on weekdays.\n", CSV)
    assert doc.media_type == PLAIN and "garage closes" in doc.text


def test_a_broken_csv_says_where():
    error = parse_error(b"a,b\n" + b'x,"' + b"y" * 200_000 + b'"\n', CSV)
    assert error.code == "corrupt_csv" and "line" in error.message


def test_an_html_page_named_csv_is_read_as_html():
    assert sniff_media_type(b"<!DOCTYPE html><html><body><p>x</p></body></html>", "export.csv") == "text/html"


# --- E-mail ------------------------------------------------------------------------------------------------------


def test_a_mail_has_its_subject_as_title_its_headers_then_its_body():
    data = build.build_eml()
    assert sniff_media_type(data, "cap.eml") == EML
    assert sniff_media_type(data, "cap") == EML
    doc = parse(data, EML)
    assert_offsets_match(doc)
    assert doc.title == "New hotel cap from November"
    headers = doc.blocks[1].text.split("\n")
    assert headers == [
        "From: Alice Martin <alice@example.com>",
        "To: Managers <managers@example.com>",
        "Date: Mon, 06 Oct 2025 09:30:00 +0200",
    ]
    assert "hotel cap is 180 euros per night" in doc.text
    assert blocks_of(doc, LIST)[-1].text == "- Book early\n- Use the travel desk"
    assert doc.attachments == []


def test_a_sender_header_the_mail_library_cannot_read_is_left_out_and_the_mail_kept():
    # "From:" running into the next header: Python's header registry raises AttributeError on it.
    data = b"Subject: New hotel cap\nFrom:Content-Type: multipart/mixed; boundary=x\n\nThe cap is 180 euros.\n"
    doc = parse(data, EML)
    assert doc.title == "New hotel cap"
    assert "From:" not in doc.text
    assert "The cap is 180 euros." in doc.text


def test_an_html_only_mail_is_read_from_its_html():
    doc = parse(build.build_eml(html=True), EML)
    assert "hotel cap is 180 euros per night" in doc.text and "<p>" not in doc.text


def test_a_mails_attachments_are_returned_apart_and_named_in_the_mail():
    pdf = build.policy_pdf()
    data = build.build_eml(
        attachments=[("policy.pdf", pdf, "application/pdf"), ("leave.csv", build.build_csv(2), "text/csv")]
    )
    doc = parse(data, EML)
    assert (doc.attachments[0].filename, doc.attachments[0].data) == ("policy.pdf", pdf)
    assert [a.filename for a in doc.attachments] == ["policy.pdf", "leave.csv"]
    assert "Attachments: policy.pdf, leave.csv" in doc.text
    assert "Person 0" not in doc.text  # an attachment's content is its own document's
    assert len(parse(data, EML, max_email_attachments=1).attachments) == 1


def test_markdown_with_key_value_lines_is_not_taken_for_a_mail():
    text = b"From: the finance team\nDate: 2025-10-01\n\n# Budget\n\nText.\n"
    assert sniff_media_type(text, "budget.md") == "text/markdown"
    assert sniff_media_type(text, "budget.eml") == EML
    assert sniff_media_type(b"Just some notes.\n", "notes.eml") == PLAIN


def test_every_new_format_error_is_readable():
    for error in (
        parse_error(build.build_pptx()[:3000], PPTX),
        parse_error(build.build_xlsx()[:2000], XLSX),
        parse_error(build.build_csv(10), CSV, max_table_rows=5),
    ):
        assert_readable(error)
    assert isinstance(parse_error(b"", CSV), ParseError)


@pytest.mark.timeout(60)  # read by the declared size, this 5 KB file took ~8 ms per row: minutes, then the limit
def test_an_xlsx_whose_declared_size_is_huge_is_read_as_its_cells():
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet["A1"], sheet["B1"], sheet["A2"], sheet["B2"] = "City", "Rate", "Oslo", 67
    sheet["XFD20000"] = "far away"
    buffer = io.BytesIO()
    workbook.save(buffer)
    parsed = parse(buffer.getvalue(), XLSX)
    assert [(block.kind, block.text) for block in parsed.blocks][1:] == [
        ("table", "City | Rate\nOslo | 67"),
        ("paragraph", "far away"),
    ]
