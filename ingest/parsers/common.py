"""What every format's parser shares: media types, block kinds, the parse result, ParseError, text cleaning and
the collector that keeps the heading path while a parser emits blocks."""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
PLAIN = "text/plain"
# Images are read by OCR (ingest/parsers/image.py).
PNG = "image/png"
JPEG = "image/jpeg"
TIFF = "image/tiff"
IMAGE_MEDIA_TYPES = frozenset({PNG, JPEG, TIFF})
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
EML = "message/rfc822"

SUPPORTED_MEDIA_TYPES: dict[str, str] = {
    PDF: "PDF document",
    DOCX: "Word document (.docx)",
    HTML: "HTML page",
    MARKDOWN: "Markdown text",
    PLAIN: "Plain text",
    PNG: "PNG image (read by OCR)",
    JPEG: "JPEG image (read by OCR)",
    TIFF: "TIFF image (read by OCR)",
    PPTX: "PowerPoint presentation (.pptx)",
    XLSX: "Excel workbook (.xlsx)",
    CSV: "CSV table",
    EML: "E-mail (.eml)",
}

HEADING = "heading"
PARAGRAPH = "paragraph"
LIST = "list"
TABLE = "table"
CODE = "code"

DEFAULT_MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_COMPRESSION_RATIO = 100
# The product's default is the setting KB_MAX_TABLE_ROWS (kb/settings.py says how it was chosen).
DEFAULT_MAX_TABLE_ROWS = 50_000
# The product's default is the setting KB_MAX_EMAIL_ATTACHMENTS.
DEFAULT_MAX_EMAIL_ATTACHMENTS = 50
# Cells are joined with this in a table block's row; a "|" inside a cell becomes "/" so that columns stay
# countable (the chunker, the extractive answerer and the passage renderer all split rows on "|").
CELL_SEPARATOR = " | "
# How many bytes are enough to tell text from binary and to spot an HTML document's start and charset.
SNIFF_BYTES = 4096
LIST_INDENT = "  "

# Characters that are invisible or rewrite the display order; they only make text harder to search.
_INVISIBLE = {"\u00ad", "\u200b", "\ufeff"}
BULLET_LINE = re.compile(r"^\s*([\u2022\u2023\u25aa\u25cf\u25e6\u2043\u2219\u00b7*\-\u2013])\s+(\S.*)$")
NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+\S")
# Plain text and PDF guess headings from a line's shape; headings are short.
HEADING_MAX_CHARS = 80
HEADING_MAX_WORDS = 12


class ParseError(Exception):
    """A document we cannot or will not read; `message` tells the admin what happened and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ParseError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class Block:
    kind: str
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    level: int = 0


@dataclass(frozen=True)
class Attachment:
    """A file inside another (an e-mail's attachment), indexed as a document of its own linked to its container."""

    filename: str
    data: bytes


@dataclass
class ParsedDocument:
    media_type: str
    blocks: list[Block]
    text: str
    offsets: list[tuple[int, int]]
    title: str | None
    page_count: int | None
    attachments: list[Attachment] = field(default_factory=list)


BLOCK_SEPARATOR = "\n\n"


def document_from_blocks(
    media_type: str, blocks: Iterable[Block], *, title: str | None = None, page_count: int | None = None
) -> ParsedDocument:
    """Assemble a ParsedDocument, computing `text` and `offsets` so that they always agree with the blocks."""
    kept = [block for block in blocks if block.text.strip()]
    offsets = []
    position = 0
    for block in kept:
        offsets.append((position, position + len(block.text)))
        position += len(block.text) + len(BLOCK_SEPARATOR)
    text = BLOCK_SEPARATOR.join(block.text for block in kept)
    return ParsedDocument(
        media_type=media_type, blocks=kept, text=text, offsets=offsets, title=title, page_count=page_count
    )


# --- text normalisation -------------------------------------------------------------------------------------


def strip_invisible(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(ch for ch in text if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE))


def clean_inline(text: str) -> str:
    """Paragraph or heading text: one line, single spaces."""
    return " ".join(strip_invisible(text).split())


def clean_lines(text: str) -> str:
    """List or table text: one entry per line, keeping each line's leading indent for nested items."""
    lines = []
    for raw in strip_invisible(text).split("\n"):
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        lines.append(" " * indent + " ".join(raw.split()))
    return "\n".join(lines)


def clean_code(text: str) -> str:
    """Code keeps its spacing; only trailing blanks and surrounding empty lines go."""
    lines = [line.rstrip() for line in strip_invisible(text).split("\n")]
    return "\n".join(lines).strip("\n")


_CLEANERS = {HEADING: clean_inline, PARAGRAPH: clean_inline, LIST: clean_lines, TABLE: clean_lines, CODE: clean_code}


class BlockCollector:
    """Keeps the heading stack while a parser emits blocks in reading order."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._stack: list[tuple[int, str]] = []
        self.first_h1: str | None = None

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._stack)

    def heading(self, text: str, level: int, page: int | None = None) -> None:
        text = clean_inline(text)
        if not text:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        if level == 1 and self.first_h1 is None:
            self.first_h1 = text
        self.blocks.append(Block(HEADING, text, self.path, page, level))

    def add(self, kind: str, text: str, page: int | None = None) -> None:
        text = _CLEANERS[kind](text)
        if text:
            self.blocks.append(Block(kind, text, self.path, page))


# --- shared by the parsers ----------------------------------------------------------------------------------


def is_empty(data: bytes) -> bool:
    return not data.removeprefix(b"\xef\xbb\xbf").strip(b" \t\r\n\f\v\x00")


def empty_error() -> ParseError:
    return ParseError("empty", "The file is empty; check that you picked the right file and upload it again.")


def supported_list() -> str:
    return (
        "PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, e-mail (.eml), HTML, Markdown, plain text "
        "or a PNG, JPEG or TIFF image"
    )


def finish_document(
    collector: BlockCollector, media_type: str, *, title: str | None, page_count: int | None = None
) -> ParsedDocument:
    blocks = collector.blocks
    if not blocks:
        raise ParseError(
            "no_text", "The document was read but contains no text; check that you uploaded the right file."
        )
    if all(block.kind == HEADING for block in blocks):
        # Chunks carry headings only as context, so a document of nothing but headings would index to nothing;
        # its lines are its content.
        blocks = [Block(PARAGRAPH, block.text, block.heading_path[:-1], block.page) for block in blocks]
    return document_from_blocks(media_type, blocks, title=title, page_count=page_count)


def table_row(cells: Iterable[str]) -> str:
    """One table row as a line of the table block's text; empty only when every cell is."""
    values = [clean_inline(cell).replace("|", "/") for cell in cells]
    return CELL_SEPARATOR.join(values) if any(values) else ""


def too_many_rows_error(limit: int) -> ParseError:
    return ParseError(
        "too_many_rows",
        f"The table has more than {limit:,} rows, the limit for one document (KB_MAX_TABLE_ROWS); split it into "
        "smaller files (for example one per year or per department) and upload those.",
    )


# --- Office files are zip archives ------------------------------------------------------------------------

# Small members (styles, settings) of ordinary documents can compress extremely well; a per-member ratio only
# means "bomb" once the member is big enough to hurt.
ZIP_RATIO_MIN_MEMBER_BYTES = 1024 * 1024
# What zipfile raises on a damaged archive: besides BadZipFile, a directory entry whose "version needed" byte is
# damaged gives NotImplementedError ("zip file version 8.4"), odd names ValueError, cut files EOFError/OSError.
ZIP_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError)


def open_office_zip(
    data: bytes, *, kind: str, main_part: str, corrupt: ParseError, max_uncompressed_bytes: int, max_ratio: int
) -> zipfile.ZipFile:
    """The archive of a .docx/.pptx/.xlsx, refused as a zip bomb from the sizes its directory records (checking
    must not inflate the bomb it looks for), or as `corrupt` when it is no zip or lacks its `main_part`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except ZIP_ERRORS as exc:
        raise corrupt from exc
    total = sum(member.file_size for member in members)
    compressed = sum(member.compress_size for member in members)
    too_big = total > max_uncompressed_bytes
    too_dense = total > ZIP_RATIO_MIN_MEMBER_BYTES and total > max_ratio * max(compressed, 1)
    dense_member = any(
        member.file_size > ZIP_RATIO_MIN_MEMBER_BYTES and member.file_size > max_ratio * max(member.compress_size, 1)
        for member in members
    )
    if too_big or too_dense or dense_member:
        archive.close()
        raise ParseError(
            "zip_bomb",
            f"The {kind} would expand to an unreasonable size when opened (a possible zip bomb); "
            "open and re-save it, or ask the author for a normal copy.",
        )
    if main_part not in archive.namelist():
        archive.close()
        raise corrupt
    return archive


# --- spreadsheets and CSV ---------------------------------------------------------------------------------


def add_table_rows(
    collector: BlockCollector, rows: Iterable[Sequence[str]], *, max_rows: int, rows_before: int = 0
) -> int:
    """Add a sheet's rows as blocks: each run of non-empty rows is a table whose first row is its header (a blank
    row ends it, so a sheet's title line or notes under it are not taken for one); a run of one row is a paragraph.
    Returns the number of non-empty rows seen so far; raises `too_many_rows` past `max_rows` without reading on.
    """
    seen = rows_before
    run: list[list[str]] = []

    def flush() -> None:
        if not run:
            return
        width = max(len(row) for row in run)
        if len(run) == 1:
            collector.add(PARAGRAPH, "; ".join(cell for cell in run[0] if cell))
        else:
            collector.add(TABLE, "\n".join(table_row(row + [""] * (width - len(row))) for row in run))
        run.clear()

    for raw in rows:
        cells = [clean_inline(cell) for cell in raw]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            flush()
            continue
        seen += 1
        if seen > max_rows:
            raise too_many_rows_error(max_rows)
        run.append(cells)
    flush()
    return seen
