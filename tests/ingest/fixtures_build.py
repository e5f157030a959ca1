"""Builders for ingestion test inputs.

Every test file is made in code at test time so that the repository holds no binary fixtures and each test
shows exactly what its input contains.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import docx
from pypdf import PdfReader, PdfWriter

PAGE_WIDTH = 612
PAGE_HEIGHT = 792
LEFT_MARGIN = 72
TOP_BASELINE = 740
FONT_SIZE = 11
LINE_HEIGHT = 14


@dataclass
class OutlineItem:
    title: str
    page_index: int
    children: list[OutlineItem] = field(default_factory=list)


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    # WinAnsiEncoding, as declared for the font
    return b"(" + escaped.encode("cp1252") + b")"


TABLE_COLUMN_WIDTH = 150


def _page_content(lines: Sequence[str | tuple[str, ...]]) -> bytes:
    """A content stream that writes one line per entry; an empty entry leaves a blank line, as a paragraph gap,
    and a tuple is a table row: its cells start TABLE_COLUMN_WIDTH points apart."""
    ops = [b"BT", f"/F1 {FONT_SIZE} Tf {LINE_HEIGHT} TL {LEFT_MARGIN} {TOP_BASELINE} Td".encode()]
    for line in lines:
        if isinstance(line, tuple):
            for index, cell in enumerate(line):
                if index:
                    ops.append(f"{TABLE_COLUMN_WIDTH} 0 Td".encode())
                ops.append(_pdf_string(cell) + b" Tj")
            ops.append(f"{-TABLE_COLUMN_WIDTH * (len(line) - 1)} 0 Td".encode())
        elif line:
            ops.append(_pdf_string(line) + b" Tj")
        ops.append(b"T*")
    ops.append(b"ET")
    return b"\n".join(ops)


def _rectangle_content() -> bytes:
    # A filled rectangle stands in for a scanned image: marks on the page, but no text operators.
    return b"0.5 g 72 72 468 648 re f"


class _PdfAssembler:
    """Writes PDF objects by number and a correct cross-reference table, the way a minimal generator would."""

    def __init__(self) -> None:
        self.objects: dict[int, bytes] = {}

    def reserve(self) -> int:
        number = len(self.objects) + 1
        self.objects[number] = b""
        return number

    def set(self, number: int, body: bytes) -> None:
        self.objects[number] = body

    def stream(self, data: bytes) -> int:
        number = self.reserve()
        self.set(number, b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
        return number

    def render(self, root: int, info: int | None) -> bytes:
        out = io.BytesIO()
        out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = {}
        for number in sorted(self.objects):
            offsets[number] = out.tell()
            out.write(b"%d 0 obj\n" % number + self.objects[number] + b"\nendobj\n")
        xref_at = out.tell()
        count = len(self.objects) + 1
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % count)
        for number in sorted(self.objects):
            out.write(b"%010d 00000 n \n" % offsets[number])
        trailer = b"<< /Size %d /Root %d 0 R" % (count, root)
        if info is not None:
            trailer += b" /Info %d 0 R" % info
        out.write(b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref_at)
        return out.getvalue()


def build_pdf(
    pages: Sequence[Sequence[str | tuple[str, ...]]],
    *,
    title: str | None = None,
    outline: Sequence[OutlineItem] = (),
    image_only: bool = False,
) -> bytes:
    """A valid PDF with one page per entry of `pages`, Helvetica text, optional /Info title and bookmarks."""
    pdf = _PdfAssembler()
    catalog = pdf.reserve()
    pages_node = pdf.reserve()
    font = pdf.reserve()
    pdf.set(font, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    page_numbers = []
    for lines in pages:
        content = pdf.stream(_rectangle_content() if image_only else _page_content(lines))
        page = pdf.reserve()
        pdf.set(
            page,
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (pages_node, PAGE_WIDTH, PAGE_HEIGHT, content, font),
        )
        page_numbers.append(page)
    kids = b" ".join(b"%d 0 R" % n for n in page_numbers)
    pdf.set(pages_node, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_numbers)))

    catalog_body = b"<< /Type /Catalog /Pages %d 0 R" % pages_node
    if outline:
        outlines_root = pdf.reserve()
        first, last, total = _write_outline(pdf, outline, outlines_root, page_numbers)
        pdf.set(outlines_root, b"<< /Type /Outlines /First %d 0 R /Last %d 0 R /Count %d >>" % (first, last, total))
        catalog_body += b" /Outlines %d 0 R /PageMode /UseOutlines" % outlines_root
    pdf.set(catalog, catalog_body + b" >>")

    info = None
    if title is not None:
        info = pdf.reserve()
        pdf.set(info, b"<< /Title " + _pdf_string(title) + b" /Producer (tests) >>")
    return pdf.render(catalog, info)


def _write_outline(
    pdf: _PdfAssembler, items: Sequence[OutlineItem], parent: int, page_numbers: Sequence[int]
) -> tuple[int, int, int]:
    numbers = [pdf.reserve() for _ in items]
    total = len(items)
    for index, (item, number) in enumerate(zip(items, numbers, strict=True)):
        body = b"<< /Title " + _pdf_string(item.title) + b" /Parent %d 0 R" % parent
        body += b" /Dest [%d 0 R /XYZ null null null]" % page_numbers[item.page_index]
        if index > 0:
            body += b" /Prev %d 0 R" % numbers[index - 1]
        if index + 1 < len(numbers):
            body += b" /Next %d 0 R" % numbers[index + 1]
        if item.children:
            first, last, count = _write_outline(pdf, item.children, number, page_numbers)
            body += b" /First %d 0 R /Last %d 0 R /Count %d" % (first, last, count)
            total += count
        pdf.set(number, body + b" >>")
    return numbers[0], numbers[-1], total


def encrypt_pdf(data: bytes, *, user_password: str) -> bytes:
    # RC4 because the AES algorithms need the `cryptography` package, which the project does not install.
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, "owner-secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def policy_pdf() -> bytes:
    """Two pages of a small policy: wrapped lines, a hyphenated word across lines, numbered headings."""
    page_one = [
        "Travel Policy",
        "",
        "1 Introduction",
        "",
        "This policy explains how employees book business travel and how the",
        "company reimburses the costs of approved trips. It applies to all perma-",
        "nent staff and contractors.",
        "",
        "2 Booking Rules",
        "",
        "Book flights at least fourteen days before departure. Economy class is",
        "the default for flights shorter than six hours.",
    ]
    page_two = [
        "3 Reimbursement",
        "",
        "Submit receipts within thirty days of returning. Claims are paid with the",
        "next monthly salary.",
    ]
    return build_pdf([page_one, page_two], title="Travel Policy")


def elf_bytes() -> bytes:
    # The first bytes of a 64-bit little-endian ELF executable, then padding like a real header.
    return b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 200


def pe_bytes() -> bytes:
    return b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200


def png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64


def build_docx() -> bytes:
    """A Word document with a title, nested headings, bullet and numbered lists, and a table."""
    document = docx.Document()
    document.add_paragraph("Employee Handbook", style="Title")
    document.add_heading("Leave", level=1)
    document.add_paragraph("Employees receive twenty-five days of paid leave each year.")
    document.add_heading("Requesting Leave", level=2)
    document.add_paragraph("Ask your manager at least two weeks in advance.")
    document.add_paragraph("Open the HR portal", style="List Bullet")
    document.add_paragraph("Choose the dates", style="List Bullet")
    document.add_paragraph("Submit the request", style="List Bullet")
    document.add_paragraph("Your manager answers within three working days.")
    document.add_heading("Equipment", level=1)
    table = document.add_table(rows=3, cols=2)
    contents = [("Item", "Owner"), ("Laptop", "IT"), ("Badge", "Facilities")]
    for row, (item, owner) in zip(table.rows, contents, strict=True):
        row.cells[0].text = item
        row.cells[1].text = owner
    document.add_paragraph("Step one", style="List Number")
    document.add_paragraph("Step two", style="List Number")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _zeros(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    while total > 0:
        size = min(chunk, total)
        yield b"\x00" * size
        total -= size


def build_zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def build_docx_bomb(uncompressed_bytes: int) -> bytes:
    """A zip that claims to be a Word document whose document.xml inflates to `uncompressed_bytes` of zeros.

    Written in streamed pieces so that building a multi-hundred-megabyte bomb stays fast and small in memory.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", b'<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for piece in _zeros(uncompressed_bytes):
                member.write(piece)
    return out.getvalue()


def build_html() -> bytes:
    return b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Expenses | Intranet</title>
<style>body { color: red }</style><script>var tracking = "SECRET_SCRIPT";</script></head>
<body>
<header><a href="/">Intranet home</a></header>
<nav><ul><li>Menu item one</li><li>Menu item two</li></ul></nav>
<main>
<h1>Expenses</h1>
<p>Claims   are paid
 monthly.</p>
<h2>Meals</h2>
<p>Meals are covered up to <b>40 EUR</b> per day.</p>
<ul><li>Breakfast</li><li>Lunch<ul><li>Only on travel days</li></ul></li><li>Dinner</li></ul>
<h2>Limits</h2>
<table><tr><th>Kind</th><th>Limit</th></tr><tr><td>Hotel</td><td>150 EUR</td></tr></table>
<pre>limit = 150
  if over: ask()</pre>
<noscript>Enable JavaScript</noscript>
<form><label>Search the intranet</label></form>
</main>
<aside>Related: holiday policy</aside>
<footer>Copyright footer text</footer>
</body></html>"""


def build_markdown() -> bytes:
    return b"""---
title: Onboarding
---
# Onboarding

Welcome to the team.
This line wraps.

## First Day

Bring your ID.

- Collect laptop
- Meet buddy
  - Coffee
1. Read handbook
2. Sign contract

Security
--------

```python
print("hello")
```

| Tool | Owner |
|------|-------|
| VPN  | IT    |

### Deep Section

Deep text.
"""


def cp1252_text() -> bytes:
    text = "Caf\u00e9 au lait \u2013 na\u00efve r\u00e9sum\u00e9.\n\nThe \u201csmart quotes\u201d cost 5 \u20ac.\n"
    return text.encode("cp1252")


# --- PowerPoint, Excel, CSV, e-mail ---------------------------------------------------------------------------


def build_pptx(*, notes: bool = True) -> bytes:
    """A three-slide deck: a title slide, a bullet slide with notes, and a slide with a table."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    deck.core_properties.title = "Quarterly Review"
    title_slide = deck.slides.add_slide(deck.slide_layouts[0])
    title_slide.shapes.title.text = "Quarterly Review Q3"
    title_slide.placeholders[1].text = "Finance team, October"
    bullets = deck.slides.add_slide(deck.slide_layouts[1])
    bullets.shapes.title.text = "Travel budget"
    body = bullets.placeholders[1].text_frame
    body.text = "Train travel is preferred under four hours"
    for text, level in (("First class only over three hours", 1), ("Hotels capped at 180 euros", 0)):
        paragraph = body.add_paragraph()
        paragraph.text = text
        paragraph.level = level
    if notes:
        bullets.notes_slide.notes_text_frame.text = "Remind managers that the cap applies from November."
    table_slide = deck.slides.add_slide(deck.slide_layouts[5])
    table_slide.shapes.title.text = "Per diem by city"
    rows = [("City", "Meals", "Hotel"), ("London", "£55", "£210"), ("Paris", "€50", "€190"), ("Berlin", "€45", "€150")]
    table = table_slide.shapes.add_table(len(rows), 3, Inches(1), Inches(2), Inches(6), Inches(2)).table
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def build_xlsx(rows_per_sheet: int = 3) -> bytes:
    """A workbook of two sheets: a title line above an expenses table, and a sheet of headcount."""
    import openpyxl

    workbook = openpyxl.Workbook()
    expenses = workbook.active
    expenses.title = "Expenses"
    expenses.append(["Travel expenses 2025"])
    expenses.append([])
    expenses.append(["City", "Meals", "Hotel", "Share"])
    cities = ["London", "Paris", "Berlin", "Madrid", "Rome"]
    for index in range(rows_per_sheet):
        expenses.append([cities[index % len(cities)] + ("" if index < len(cities) else f" {index}"), 55.0, 210, 0.25])
        expenses.cell(row=expenses.max_row, column=4).number_format = "0%"
    people = workbook.create_sheet("Headcount")
    people.append(["Department", "People"])
    people.append(["Finance", 12])
    people.append(["Sales", 40])
    workbook.create_sheet("Empty")
    workbook.properties.title = "Budget 2025"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def build_xlsx_with_cached_formula() -> bytes:
    """A workbook whose formula carries the value Excel computed, as Excel saves it (XlsxWriter writes the cached
    value; openpyxl cannot, it does not compute formulas)."""
    import xlsxwriter

    out = io.BytesIO()
    workbook = xlsxwriter.Workbook(out, {"in_memory": True})
    sheet = workbook.add_worksheet("Totals")
    sheet.write_row(0, 0, ["Item", "Amount"])
    sheet.write_row(1, 0, ["Hotel", 180])
    sheet.write_row(2, 0, ["Meals", 55])
    sheet.write(3, 0, "Total")
    sheet.write_formula(3, 1, "=SUM(B2:B3)", None, 235)
    workbook.close()
    return out.getvalue()


def encrypt_office(data: bytes, password: str) -> bytes:
    """The file password-protected the way Office does it (an OLE container with the encrypted package)."""
    import msoffcrypto.format.ooxml

    out = io.BytesIO()
    msoffcrypto.format.ooxml.OOXMLFile(io.BytesIO(data)).encrypt(password, out)
    return out.getvalue()


def build_pptx_bomb(uncompressed_bytes: int) -> bytes:
    """A zip that claims to be a PowerPoint file whose presentation.xml inflates to `uncompressed_bytes` of zeros."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", b'<?xml version="1.0"?><Types/>')
        with archive.open("ppt/presentation.xml", "w", force_zip64=True) as member:
            for piece in _zeros(uncompressed_bytes):
                member.write(piece)
    return out.getvalue()


def build_csv(rows: int, *, delimiter: str = ",") -> bytes:
    lines = [delimiter.join(["Employee", "Department", "Start date", "Days of leave"])]
    lines += [
        delimiter.join([f"Person {n}", "Finance" if n % 2 else "Sales", "2024-01-15", str(20 + n % 10)])
        for n in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def build_eml(*, attachments: Sequence[tuple[str, bytes, str]] = (), html: bool = False) -> bytes:
    """A mail with a plain (or HTML only) body and the given (filename, data, media type) attachments."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "New hotel cap from November"
    message["From"] = "Alice Martin <alice@example.com>"
    message["To"] = "Managers <managers@example.com>"
    message["Date"] = "Mon, 06 Oct 2025 09:30:00 +0200"
    body = (
        "Hello all,\n\nFrom November the hotel cap is 180 euros per night in every city.\n\n"
        "- Book early\n- Use the travel desk\n\nAlice"
    )
    if html:
        message.set_content(
            "<html><body><p>Hello all,</p><p>From November the hotel cap is 180 euros per night.</p></body></html>",
            subtype="html",
        )
    else:
        message.set_content(body)
    for filename, data, media_type in attachments:
        maintype, subtype = media_type.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()
