"""PDF text layers (pypdf): pages kept on every block, paragraphs, lists and headings rebuilt from plain lines,
bookmarks used as headings, running headers and footers dropped. Pages without a text layer (scans) are rendered
by pypdfium2 and read by OCR (ingest/parsers/ocr.py); the result says which pages and how well."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

from ingest.parsers.common import (
    BULLET_LINE,
    HEADING_MAX_CHARS,
    HEADING_MAX_WORDS,
    LIST,
    NUMBERED_HEADING,
    PARAGRAPH,
    PDF,
    TABLE,
    BlockCollector,
    ParsedDocument,
    ParseError,
    clean_inline,
    finish_document,
    strip_invisible,
    table_row,
)
from ingest.parsers.ocr import (
    OcrLimits,
    OcrPage,
    OcrReport,
    progress,
    read_page,
    unreadable_error,
    with_ocr,
)

logger = logging.getLogger(__name__)

# Acrobat requires %%EOF within the last 1024 bytes; a file without it was cut off in transfer.
PDF_EOF_SEARCH_BYTES = 1024
DAMAGED_PAGE = "the page is damaged: it could not be loaded to be read"
# PDF layout heuristics: a line shorter than this share of the document's typical line ends a paragraph when it
# also ends a sentence (headings are short: see HEADING_MAX_CHARS).
PDF_SHORT_LINE_RATIO = 0.8
PDF_TYPICAL_LINE_PERCENTILE = 0.8
# Running headers and footers repeat at the top or bottom of pages (with digits ignored, so "Page 3" and "Page 4"
# are the same line). Chapter headers only repeat within their chapter, so a share of all pages would miss them;
# three pages are enough that a real first line of text is very unlikely to repeat by chance.
PDF_RUNNING_LINE_MIN_PAGES = 3
# Outline titles are sometimes wrapped over a few lines in the page text.
PDF_OUTLINE_MAX_WRAPPED_LINES = 3
# Tables in the text layer: pypdf's layout mode keeps horizontal positions, so cells are runs of words parted by
# at least PDF_TABLE_GAP spaces (words of one cell are one or two apart). A table is at least PDF_TABLE_MIN_ROWS
# lines in a row with the same number of cells (two or more) starting within PDF_TABLE_ALIGN characters of the
# first row's, so that a justified paragraph's wide word gaps, which do not line up, are not taken for one.
PDF_TABLE_GAP = 3
PDF_TABLE_MIN_ROWS = 2
PDF_TABLE_ALIGN = 8
_LAYOUT_CELL = re.compile(rf"\S+(?: {{1,{PDF_TABLE_GAP - 1}}}\S+)*")

_PAGE_NUMBER_LINE = re.compile(r"^(page\s*)?\d+(\s*(of|/)\s*\d+)?$", re.IGNORECASE)
_SMALL_TITLE_WORDS = frozenset(
    "a an and as at but by for from in into of on or over the to under via vs with".split()  # noqa: SIM905 - a word list reads better as text
)


def _corrupt_pdf(detail: str = "damaged or incomplete") -> ParseError:
    return ParseError(
        "corrupt_pdf",
        f"The PDF is {detail} and cannot be read; download or export it again and upload the new copy.",
    )


def _encrypted_pdf() -> ParseError:
    return ParseError(
        "encrypted_pdf",
        "This PDF is encrypted with a password; remove the password (for example, print it to a new PDF) "
        "and upload it again.",
    )


def _open_pdf(data: bytes) -> PdfReader:
    if b"%%EOF" not in data[-PDF_EOF_SEARCH_BYTES:]:
        raise _corrupt_pdf("truncated (its end is missing)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:  # pypdf raises many exception types on malformed input
        raise _corrupt_pdf() from exc
    if reader.is_encrypted:
        try:
            # Many PDFs are "encrypted" only with an owner password that restricts printing; they open freely.
            result = reader.decrypt("")
        except DependencyError as exc:
            # AES needs the optional `cryptography` package, which is not installed.
            raise _encrypted_pdf() from exc
        except Exception as exc:
            raise _corrupt_pdf() from exc
        if result == PasswordType.NOT_DECRYPTED:
            raise _encrypted_pdf()
    return reader


def parse_pdf(data: bytes) -> ParsedDocument:
    reader = _open_pdf(data)
    try:
        page_count = len(reader.pages)
    except Exception as exc:
        raise _corrupt_pdf() from exc
    page_texts = []
    for number in range(1, page_count + 1):
        try:
            page_texts.append(reader.pages[number - 1].extract_text() or "")
        except FileNotDecryptedError as exc:
            raise _encrypted_pdf() from exc
        except Exception as exc:
            # Indexing the rest would silently leave a hole in the document; say where the damage is instead.
            raise _corrupt_pdf(f"damaged (page {number} cannot be read)") from exc
    if page_count == 0:
        raise ParseError("no_text", "The PDF has no pages; export it again from the original document.")
    scanned = [index for index, text in enumerate(page_texts) if not text.strip()]
    tables = {index: _table_rows(reader.pages[index]) for index, text in enumerate(page_texts) if text.strip()}
    if not scanned:
        return _layout(reader, [_pdf_lines(text) for text in page_texts], {}, page_count, tables)
    return _parse_with_ocr(data, reader, page_texts, scanned, tables)


def _table_rows(page: Any) -> dict[str, list[str]]:
    """The page's table rows from its layout text, keyed by the line pypdf's plain text gives for the same row (the
    cells joined by single spaces); {} when layout extraction fails (the page is then read as text only)."""
    try:
        layout = page.extract_text(extraction_mode="layout") or ""
    except Exception:  # layout mode is an extra; the plain text was read already
        logger.info("layout text unavailable for a page; its tables are read as text", exc_info=True)
        return {}
    rows: dict[str, list[str]] = {}
    run: list[list[tuple[int, str]]] = []

    def close() -> None:
        if len(run) >= PDF_TABLE_MIN_ROWS:
            for cells in run:
                rows[" ".join(" ".join(text.split()) for _, text in cells)] = [text for _, text in cells]
        run.clear()

    for line in layout.splitlines():
        cells = [(match.start(), match.group()) for match in _LAYOUT_CELL.finditer(line)]
        aligned = (
            bool(run)
            and len(cells) == len(run[0])
            and all(abs(start - first) <= PDF_TABLE_ALIGN for (start, _), (first, _) in zip(cells, run[0], strict=True))
        )
        if len(cells) >= 2 and (aligned or not run):
            run.append(cells)
            continue
        close()
        if len(cells) >= 2:
            run.append(cells)
    close()
    return rows


def _layout(
    reader: PdfReader,
    lines: list[list[str]],
    scanned: dict[int, Callable[[BlockCollector, int], None]],
    page_count: int,
    tables: dict[int, dict[str, list[str]]],
) -> ParsedDocument:
    outline = _pdf_outline(reader)
    pages = _drop_running_lines(lines)
    collector = BlockCollector()
    _PdfLayout(collector, pages, outline, scanned, tables).run()
    return finish_document(collector, PDF, title=_pdf_title(reader), page_count=page_count)


def _parse_with_ocr(
    data: bytes, reader: PdfReader, page_texts: list[str], scanned: list[int], tables: dict[int, dict[str, list[str]]]
) -> ParsedDocument:
    """OCR the pages without a text layer (those with nothing drawn on them are blank, not unread), the others
    as text; blocks keep their page numbers either way."""
    import pypdfium2

    limits = OcrLimits.from_settings()
    try:
        pdf = pypdfium2.PdfDocument(data)
    except pypdfium2.PdfiumError as exc:
        raise _corrupt_pdf() from exc
    results: dict[int, OcrPage] = {}
    try:
        to_read = [index for index in scanned if _has_marks(pdf, index)]
        with progress(len(to_read)) as step:

            def reader_for(index: int) -> Callable[[BlockCollector, int], None]:
                def run(collector: BlockCollector, page: int) -> None:
                    step(len(results))
                    try:
                        image, dpi = _render(pdf[index], limits)
                    except pypdfium2.PdfiumError:
                        # A damaged page object: the page is reported unread, the others are kept.
                        results[index] = OcrPage(page, problem=DAMAGED_PAGE)
                        return
                    results[index] = read_page(image, page, collector, limits, dpi=dpi)

                return run

            try:
                document = _layout(
                    reader,
                    [_pdf_lines(text) for text in page_texts],
                    {index: reader_for(index) for index in to_read},
                    len(page_texts),
                    tables,
                )
            except ParseError as exc:
                if exc.code != "no_text":
                    raise
                document = None
    finally:
        pdf.close()
    report = OcrReport(pages=tuple(results[index] for index in sorted(results)))
    if document is None:
        if report.unreadable:
            raise unreadable_error(report)
        raise ParseError(
            "no_text", "The PDF's pages are blank: there is no text and nothing to read by OCR; check the file."
        )
    return with_ocr(document, report)


def _has_marks(pdf: Any, index: int) -> bool:
    """Whether anything is drawn on the page (an image, a path, a text object without extractable text); a page
    that cannot even be loaded is given to OCR, which reports it as damaged."""
    import pypdfium2

    try:
        page = pdf[index]
    except pypdfium2.PdfiumError:
        return True
    return next(iter(page.get_objects(max_depth=1)), None) is not None


def _render(page: Any, limits: OcrLimits) -> tuple[Any, int]:
    """The page as a greyscale image at the OCR resolution, lowered for a page so large (a poster, a plan) that
    it would pass the pixel limit."""
    width, height = page.get_size()  # points
    scale = limits.dpi / 72
    pixels = width * height * scale * scale
    if pixels > limits.max_pixels:
        scale *= (limits.max_pixels / pixels) ** 0.5
    return page.render(scale=scale, grayscale=True).to_pil(), round(scale * 72)


def _pdf_title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        raw = metadata.title if metadata is not None else None
    except Exception:  # a damaged /Info dictionary should not stop the text from being read
        logger.info("unreadable PDF metadata", exc_info=True)
        return None
    title = clean_inline(str(raw or ""))
    title = re.sub(r"^Microsoft (Word|PowerPoint) - ", "", title)
    return title or None


@dataclass(frozen=True)
class _OutlineEntry:
    title: str
    page_index: int
    level: int


def _pdf_outline(reader: PdfReader) -> list[_OutlineEntry]:
    entries: list[_OutlineEntry] = []

    def walk(items: Iterable[Any], level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            page_index = reader.get_destination_page_number(item)
            title = clean_inline(str(getattr(item, "title", "") or ""))
            if title and page_index is not None and page_index >= 0:
                entries.append(_OutlineEntry(title, page_index, level))

    try:
        walk(reader.outline, 1)
    except Exception:  # bookmarks are a bonus; a broken outline must not make the text unreadable
        logger.info("unreadable PDF outline", exc_info=True)
        return []
    return entries


def _pdf_lines(text: str) -> list[str]:
    return [clean_inline(line) for line in strip_invisible(text).split("\n")]


def _running_key(line: str) -> str:
    return re.sub(r"\d+", "#", line.lower())


def _drop_running_lines(pages: list[list[str]]) -> list[list[str]]:
    """Remove page numbers and headers/footers repeated at page edges: they would split paragraphs that continue
    across a page break and add noise to every chunk."""
    pages = [[line for line in page if line] for page in pages]
    edge_keys: Counter[str] = Counter()
    for page in pages:
        edge_keys.update({_running_key(line) for line in page[:1] + page[-1:]})
    running = {key for key, count in edge_keys.items() if count >= PDF_RUNNING_LINE_MIN_PAGES}
    cleaned = []
    for page in pages:
        lines = list(page)
        for position in (0, -1):
            if not lines:
                break
            edge = lines[position]
            # A sentence at a page edge is body text that happens to look alike (a form's "Total due." line).
            if _PAGE_NUMBER_LINE.match(edge) or (_running_key(edge) in running and not _ends_sentence(edge)):
                lines.pop(position)
        cleaned.append(lines)
    return cleaned


_CLOSING_PUNCTUATION = "\"')]\u201d\u2019"


def _ends_sentence(line: str) -> bool:
    return line.rstrip(_CLOSING_PUNCTUATION).endswith((".", "!", "?", ":", "\u2026"))


def _looks_like_heading(line: str) -> int | None:
    """A heading level for a short, unpunctuated line that is numbered ("2.1 Scope") or in Title Case."""
    if len(line) > HEADING_MAX_CHARS or line.endswith((".", ",", ";", ":", "!", "?")):
        return None
    words = line.split()
    if not words or len(words) > HEADING_MAX_WORDS or not any(ch.isalpha() for ch in line):
        return None
    numbered = NUMBERED_HEADING.match(line)
    if numbered:
        rest = line[numbered.end(1) :].lstrip(". ")
        if rest[:1].isupper():
            return numbered.group(1).count(".") + 1
        return None
    significant = [word for word in words if word.lower() not in _SMALL_TITLE_WORDS or word is words[0]]
    if all(word[:1].isupper() or not word[:1].isalpha() for word in significant):
        return 1
    return None


class _PdfLayout:
    """Rebuilds paragraphs, lists and headings from the plain lines pypdf extracts per page.

    pypdf does not report vertical gaps in plain mode, so a paragraph ends where a line ends a sentence and is
    clearly shorter than the document's typical line, or where a heading or list item starts.
    """

    def __init__(
        self,
        collector: BlockCollector,
        pages: list[list[str]],
        outline: list[_OutlineEntry],
        scanned: dict[int, Callable[[BlockCollector, int], None]],
        tables: dict[int, dict[str, list[str]]],
    ) -> None:
        self.collector = collector
        self.pages = pages
        self.outline = outline
        self.scanned = scanned  # page index -> reads that page by OCR into the collector
        self.tables = tables  # page index -> its table rows' plain lines -> their cells
        self.rows: list[list[str]] = []
        lengths = sorted(len(line) for page in pages for line in page)
        self.typical = lengths[int(len(lengths) * PDF_TYPICAL_LINE_PERCENTILE)] if lengths else 0
        self.paragraph: list[str] = []
        self.items: list[str] = []
        self.page = 1

    def run(self) -> None:
        for index, lines in enumerate(self.pages):
            self.page = index + 1
            hits, missing = self._outline_hits(index, lines)
            for entry in missing:
                self.collector.heading(entry.title, entry.level, self.page)
            if index in self.scanned:
                self.flush()
                self.scanned[index](self.collector, self.page)
                continue
            position = 0
            rows = self.tables.get(index, {})
            while position < len(lines):
                hit = hits.get(position)
                cells = rows.get(" ".join(lines[position].split())) if hit is None else None
                if cells is not None:
                    self.flush_paragraph()
                    self.flush_list()
                    self.rows.append(cells)
                    position += 1
                    continue
                self.flush_rows()
                if hit is None:
                    self.line(lines[position], previous=lines[position - 1] if position else None)
                    position += 1
                    continue
                self.flush()
                self.collector.heading(hit.entry.title, hit.entry.level, self.page)
                if hit.rest:
                    # pypdf often puts a heading and the start of its first paragraph on one line
                    self.line(hit.rest, previous=None)
                position += hit.lines_used
            # Blocks do not span pages so that each keeps one page number for citations.
            self.flush()

    def _outline_hits(self, page_index: int, lines: list[str]) -> tuple[dict[int, _OutlineHit], list[_OutlineEntry]]:
        """Find this page's bookmarks in its lines: whole lines first, then at the start of a line. Bookmarks not
        found are returned apart and open their section at the top of the page, so that paths stay right."""
        hits: dict[int, _OutlineHit] = {}
        missing = []
        for entry in (e for e in self.outline if e.page_index == page_index):
            hit = _find_outline_title(entry, lines, hits, whole_line=True) or _find_outline_title(
                entry, lines, hits, whole_line=False
            )
            if hit is None:
                missing.append(entry)
            else:
                hits[hit[0]] = hit[1]
        return hits, missing

    def line(self, line: str, previous: str | None) -> None:
        bullet = BULLET_LINE.match(line)
        if bullet:
            self.flush_paragraph()
            self.items.append(f"- {bullet.group(2)}")
            return
        if self.items and not self.paragraph:
            last = self.items[-1]
            if len(last) >= PDF_SHORT_LINE_RATIO * self.typical and not _ends_sentence(last):
                # a long item line that does not end a sentence wraps onto this one
                self.items[-1] = _join_wrapped(last, line)
                return
        at_boundary = previous is None or not self.paragraph or _ends_sentence(self.paragraph[-1])
        level = _looks_like_heading(line) if not self.outline and at_boundary else None
        if level is not None:
            self.flush()
            self.collector.heading(line, level, self.page)
            return
        self.flush_list()
        self.paragraph.append(line)
        if _ends_sentence(line) and len(line) < PDF_SHORT_LINE_RATIO * self.typical:
            self.flush_paragraph()

    def flush_paragraph(self) -> None:
        if self.paragraph:
            text = self.paragraph[0]
            for line in self.paragraph[1:]:
                text = _join_wrapped(text, line)
            self.collector.add(PARAGRAPH, text, self.page)
            self.paragraph = []

    def flush_list(self) -> None:
        if self.items:
            self.collector.add(LIST, "\n".join(self.items), self.page)
            self.items = []

    def flush_rows(self) -> None:
        if len(self.rows) >= PDF_TABLE_MIN_ROWS:
            width = max(len(cells) for cells in self.rows)
            text = "\n".join(table_row(cells + [""] * (width - len(cells))) for cells in self.rows)
            self.collector.add(TABLE, text, self.page)
        elif self.rows:  # a lone row of a table the running headers took the rest of: plain text
            self.collector.add(PARAGRAPH, " ".join(self.rows[0]), self.page)
        self.rows = []

    def flush(self) -> None:
        self.flush_rows()
        self.flush_paragraph()
        self.flush_list()


@dataclass(frozen=True)
class _OutlineHit:
    entry: _OutlineEntry
    lines_used: int
    rest: str  # text after the heading on its last line: the start of the body


def _find_outline_title(
    entry: _OutlineEntry, lines: list[str], taken: dict[int, _OutlineHit], *, whole_line: bool
) -> tuple[int, _OutlineHit] | None:
    wanted = _heading_key(entry.title)
    if not wanted:
        return None
    for position in range(len(lines)):
        if position in taken:
            continue
        for used in range(1, PDF_OUTLINE_MAX_WRAPPED_LINES + 1):
            if position + used > len(lines):
                break
            rest = _after_heading(wanted, " ".join(lines[position : position + used]))
            if rest is not None and (rest == "" or not whole_line):
                return position, _OutlineHit(entry, used, rest)
    return None


def _after_heading(wanted: str, text: str) -> str | None:
    """The rest of `text` when it starts with a heading whose key is `wanted` (a leading section number that the
    bookmark leaves out is allowed), else None."""
    words = text.split()
    starts = [0, 1] if words and NUMBERED_HEADING.match(text) else [0]
    for first in starts:
        for last in range(first + 1, len(words) + 1):
            key = _heading_key(" ".join(words[first:last]))
            if key == wanted:
                return " ".join(words[last:])
            if not wanted.startswith(key):
                break
    return None


def _heading_key(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


_HYPHENATED_END = re.compile(r"(\w)[-\u00ad]$")


def _join_wrapped(text: str, line: str) -> str:
    """Join a wrapped line, removing the hyphen a typesetter added to break a word across lines."""
    if _HYPHENATED_END.search(text) and line[:1].islower():
        return text[:-1] + line
    return f"{text} {line}"
