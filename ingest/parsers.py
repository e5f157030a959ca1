"""Turn uploaded bytes into structured text blocks: the pure-logic first step of ingestion.

Nothing here touches the database. `sniff_media_type` decides what a file really is from its bytes, and `parse`
returns a `ParsedDocument` whose blocks keep the structure the chunker splits on (headings, paragraphs, lists,
tables, code) and, for PDFs, the page each block came from. Every input we refuse raises `ParseError` with a
machine code and a sentence an admin can act on.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import charset_normalizer
import docx
from docx.table import Table
from docx.text.paragraph import Paragraph
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError
from selectolax.lexbor import LexborHTMLParser, LexborNode

logger = logging.getLogger(__name__)

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
PLAIN = "text/plain"

SUPPORTED_MEDIA_TYPES: dict[str, str] = {
    PDF: "PDF document",
    DOCX: "Word document (.docx)",
    HTML: "HTML page",
    MARKDOWN: "Markdown text",
    PLAIN: "Plain text",
}

HEADING = "heading"
PARAGRAPH = "paragraph"
LIST = "list"
TABLE = "table"
CODE = "code"

DEFAULT_MAX_UNCOMPRESSED_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_COMPRESSION_RATIO = 100
# Small members (styles, settings) of ordinary documents can compress extremely well; a per-member ratio only
# means "bomb" once the member is big enough to hurt.
ZIP_RATIO_MIN_MEMBER_BYTES = 1024 * 1024

# The PDF header may follow a little junk (the spec lets readers look this far), and Acrobat requires %%EOF
# within the last 1024 bytes; a file without it was cut off in transfer.
PDF_HEADER_SEARCH_BYTES = 1024
PDF_EOF_SEARCH_BYTES = 1024
# How many bytes are enough to tell text from binary and to spot an HTML document's start and charset.
SNIFF_BYTES = 4096
# Text files have almost no C0 control bytes besides tab/newline/carriage return/form feed; binary formats
# have many. 5% tolerates a stray escape sequence in a log file.
MAX_CONTROL_BYTE_RATIO = 0.05
MIN_PRINTABLE_RATIO = 0.95
# Western European text decoded as cp1252 has few accented letters; Cyrillic or Greek mis-decoded as cp1252
# turns nearly every letter into an accented Latin one. 30% separates the two with a wide margin.
MAX_CP1252_ACCENTED_LETTER_RATIO = 0.3

# PDF layout heuristics: a line shorter than this share of the document's typical line ends a paragraph when it
# also ends a sentence; headings are short.
PDF_SHORT_LINE_RATIO = 0.8
PDF_TYPICAL_LINE_PERCENTILE = 0.8
PDF_HEADING_MAX_CHARS = 80
PDF_HEADING_MAX_WORDS = 12
# Running headers and footers repeat at the top or bottom of pages (with digits ignored, so "Page 3" and "Page 4"
# are the same line). Chapter headers only repeat within their chapter, so a share of all pages would miss them;
# three pages are enough that a real first line of text is very unlikely to repeat by chance.
PDF_RUNNING_LINE_MIN_PAGES = 3
# Outline titles are sometimes wrapped over a few lines in the page text.
PDF_OUTLINE_MAX_WRAPPED_LINES = 3

HTML_DROPPED_TAGS = (
    "script",
    "style",
    "nav",
    "aside",
    "noscript",
    "form",
    "svg",
    "template",
    "iframe",
    "button",
    "select",
    "textarea",
    "object",
    "canvas",
)
HTML_PAGE_CHROME_TAGS = ("header", "footer")
HTML_HEADING_LEVELS = {f"h{n}": n for n in range(1, 7)}
HTML_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "blockquote",
        "body",
        "details",
        "dialog",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "header",
        "hgroup",
        "hr",
        "li",
        "main",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "ul",
        *HTML_HEADING_LEVELS,
    }
)
HTML_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
LIST_INDENT = "  "

# Characters that are invisible or rewrite the display order; they only make text harder to search.
_INVISIBLE = {"\u00ad", "\u200b", "\ufeff"}
_BULLET_LINE = re.compile(r"^\s*([\u2022\u2023\u25aa\u25cf\u25e6\u2043\u2219\u00b7*\-\u2013])\s+(\S.*)$")
_NUMBERED_HEADING = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+\S")
_PAGE_NUMBER_LINE = re.compile(r"^(page\s*)?\d+(\s*(of|/)\s*\d+)?$", re.IGNORECASE)
_SMALL_TITLE_WORDS = frozenset(
    "a an and as at but by for from in into of on or over the to under via vs with".split()  # noqa: SIM905 - a word list reads better as text
)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
# A leading "---" block is front matter only if it holds YAML keys; otherwise it is a horizontal rule.
_YAML_KEY_LINE = re.compile(r"^[A-Za-z_][\w-]*\s*:")
_FRONT_MATTER_TITLE = re.compile(r"^title\s*:\s*[\"']?(.+?)[\"']?\s*$", re.MULTILINE)

_EXTENSION_KINDS = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": PLAIN,
    ".text": PLAIN,
}
_TEXT_FAMILY = frozenset({HTML, MARKDOWN, PLAIN})


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


@dataclass
class ParsedDocument:
    media_type: str
    blocks: list[Block]
    text: str
    offsets: list[tuple[int, int]]
    title: str | None
    page_count: int | None


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


def _strip_invisible(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(ch for ch in text if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE))


def clean_inline(text: str) -> str:
    """Paragraph or heading text: one line, single spaces."""
    return " ".join(_strip_invisible(text).split())


def clean_lines(text: str) -> str:
    """List or table text: one entry per line, keeping each line's leading indent for nested items."""
    lines = []
    for raw in _strip_invisible(text).split("\n"):
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        lines.append(" " * indent + " ".join(raw.split()))
    return "\n".join(lines)


def clean_code(text: str) -> str:
    """Code keeps its spacing; only trailing blanks and surrounding empty lines go."""
    lines = [line.rstrip() for line in _strip_invisible(text).split("\n")]
    return "\n".join(lines).strip("\n")


_CLEANERS = {HEADING: clean_inline, PARAGRAPH: clean_inline, LIST: clean_lines, TABLE: clean_lines, CODE: clean_code}


class _BlockCollector:
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


# --- sniffing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Detected:
    media_type: str | None  # a supported type, or None when the bytes are something we do not read
    description: str


def _extension(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return PurePosixPath(base).suffix.lower()


def _describe_extension(ext: str) -> str:
    return f"“{ext}”" if ext else "no extension"


def _is_empty(data: bytes) -> bool:
    return not data.removeprefix(b"\xef\xbb\xbf").strip(b" \t\r\n\f\v\x00")


def _empty_error() -> ParseError:
    return ParseError("empty", "The file is empty; check that you picked the right file and upload it again.")


_EXECUTABLE_MAGIC = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
    b"\x00asm",
)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\xfd7zXZ\x00")
# "MZ" and "BZh" are also how ordinary text can start; a DOS/Windows executable's header has NUL bytes right
# away, and bzip2 follows its magic with a block size digit and the block signature.
_DOS_HEADER_BYTES = 64
_BZIP2_MAGIC = re.compile(rb"^BZh[1-9]1AY&SY")
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _detect(data: bytes, ext: str) -> _Detected:
    head = data[:SNIFF_BYTES]
    if b"%PDF-" in data[:PDF_HEADER_SEARCH_BYTES]:
        return _Detected(PDF, "a PDF document")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _detect_zip(data, ext)
    if head.startswith(_OLE_MAGIC):
        return _Detected(None, "a legacy Office file (.doc, .xls or .ppt)")
    if head.startswith(_EXECUTABLE_MAGIC) or (head.startswith(b"MZ") and b"\x00" in head[:_DOS_HEADER_BYTES]):
        return _Detected(None, "an executable program")
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return _Detected(None, "an image")
    if head.startswith(_ARCHIVE_MAGIC) or _BZIP2_MAGIC.match(head):
        return _Detected(None, "a compressed archive")
    if head.startswith(b"{\\rtf"):
        return _Detected(None, "a rich-text (RTF) document")
    if _looks_binary(head):
        return _Detected(None, "binary data")
    if _looks_like_html(head, ext):
        return _Detected(HTML, "an HTML page")
    return _Detected(MARKDOWN if ext in (".md", ".markdown") else PLAIN, "text")


def _detect_zip(data: bytes, ext: str) -> _Detected:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        # The directory sits at the end of a zip, so a truncated file (or just the head of an upload) has none;
        # the local headers at the start still name the first members, and Office writes its main part early.
        names = _zip_local_names(data)
        if not names and ext == ".docx":
            return _Detected(DOCX, "a Word document")  # damaged: the parser will say so
    if "word/document.xml" in names:
        return _Detected(DOCX, "a Word document")
    if any(name.startswith("xl/") for name in names):
        return _Detected(None, "an Excel workbook")
    if any(name.startswith("ppt/") for name in names):
        return _Detected(None, "a PowerPoint presentation")
    if "content.xml" in names or "mimetype" in names:
        return _Detected(None, "an OpenDocument file")
    if ext == ".docx" and any(name.startswith(("word/", "[Content_Types]")) for name in names):
        return _Detected(DOCX, "a Word document")
    return _Detected(None, "a zip archive")


_ZIP_LOCAL_HEADER = b"PK\x03\x04"
# Fixed part of a zip local file header; the name length and extra-field length are its last two 16-bit fields.
_ZIP_LOCAL_HEADER_SIZE = 30
_ZIP_LOCAL_HEADER_NAME_LENGTHS = struct.Struct("<HH")


def _zip_local_names(data: bytes) -> list[str]:
    """Member names from the local headers found in `data`, for zips whose central directory is missing."""
    names = []
    position = data.find(_ZIP_LOCAL_HEADER)
    while position != -1 and position + _ZIP_LOCAL_HEADER_SIZE <= len(data):
        name_length, _ = _ZIP_LOCAL_HEADER_NAME_LENGTHS.unpack_from(data, position + _ZIP_LOCAL_HEADER_SIZE - 4)
        start = position + _ZIP_LOCAL_HEADER_SIZE
        names.append(data[start : start + name_length].decode("utf-8", "replace"))
        position = data.find(_ZIP_LOCAL_HEADER, start)
    return names


def _looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False  # UTF-16 text with a byte order mark is full of NUL bytes but is still text
    if b"\x00" in head:
        return True
    control = sum(1 for byte in head if byte < 0x20 and byte not in b"\t\n\r\f\x1b")
    return bool(head) and control / len(head) > MAX_CONTROL_BYTE_RATIO


_HTML_STRONG_START = re.compile(rb"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>])", re.I | re.S)
_HTML_WEAK_START = re.compile(
    rb"^(?:<!--.*?-->\s*)*<(?:head|body|title|meta|div|p|h[1-6]|table|section|article|main|ul|ol|a|b|br|font"
    rb"|script|style|iframe)[\s/>]",
    re.I | re.S,
)


def _looks_like_html(head: bytes, ext: str) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if _HTML_STRONG_START.match(start):
        return True
    # Markdown and text files legitimately start with a tag now and then (README badges); only trust the weak
    # signal when the name does not say what the file is.
    return ext not in (".md", ".markdown", ".txt", ".text") and bool(_HTML_WEAK_START.match(start))


def sniff_media_type(data: bytes, filename: str) -> str:
    """Media type from the bytes, the extension only choosing between Markdown and plain text."""
    if _is_empty(data):
        raise _empty_error()
    ext = _extension(filename)
    detected = _detect(data, ext)
    claimed = _EXTENSION_KINDS.get(ext)
    if detected.media_type is None:
        if claimed is not None:
            raise ParseError(
                "mislabelled",
                f"The file is named {_describe_extension(ext)} but contains {detected.description}; "
                "check that you uploaded the right file.",
            )
        raise ParseError(
            "unsupported_type",
            f"The file contains {detected.description}, which cannot be indexed; upload it as {_supported_list()}.",
        )
    if claimed is None or claimed == detected.media_type:
        return detected.media_type
    if claimed in _TEXT_FAMILY and detected.media_type in _TEXT_FAMILY:
        return detected.media_type
    raise ParseError(
        "mislabelled",
        f"The file is named {_describe_extension(ext)} but contains {detected.description}; rename it with the "
        "right extension or upload the intended file.",
    )


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _supported_list() -> str:
    return "PDF, Word (.docx), HTML, Markdown or plain text"


# --- entry point --------------------------------------------------------------------------------------------


def parse(
    data: bytes,
    media_type: str,
    *,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO,
) -> ParsedDocument:
    """Parse `data` as `media_type` (usually from `sniff_media_type`); raise ParseError for every bad input."""
    if _is_empty(data):
        raise _empty_error()
    if len(data) > max_uncompressed_bytes:
        raise ParseError(
            "too_large",
            f"The file is {_megabytes(len(data))}, above the {_megabytes(max_uncompressed_bytes)} limit; "
            "split it into smaller documents and upload those.",
        )
    if media_type == PDF:
        return _parse_pdf(data)
    if media_type == DOCX:
        return _parse_docx(data, max_uncompressed_bytes=max_uncompressed_bytes, max_ratio=max_compression_ratio)
    if media_type == HTML:
        return _parse_html(data)
    if media_type == MARKDOWN:
        return _parse_markdown(data)
    if media_type == PLAIN:
        return _parse_plain(data)
    raise ParseError(
        "unsupported_type", f"Files of type {media_type!r} cannot be indexed; upload them as {_supported_list()}."
    )


# --- text decoding ------------------------------------------------------------------------------------------

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def _binary_error() -> ParseError:
    return ParseError(
        "binary",
        f"The file contains binary data, not text; upload the document itself as {_supported_list()}.",
    )


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Decode text bytes: byte order mark, then a declared charset, UTF-8, cp1252, then detection."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise _undecodable_error() from exc
    if _looks_binary(data[:SNIFF_BYTES]):
        raise _binary_error()
    if declared:
        try:
            return data.decode(declared)
        except (LookupError, UnicodeDecodeError):
            logger.info("declared charset %r does not decode the document; detecting instead", declared)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = _decode_cp1252(data)
    if text is None:
        best = charset_normalizer.from_bytes(data).best()
        if best is None:
            raise _undecodable_error()
        text = str(best)
    if _printable_ratio(text) < MIN_PRINTABLE_RATIO:
        raise _binary_error()
    return text


def _undecodable_error() -> ParseError:
    return ParseError(
        "unknown_encoding",
        "The text's character encoding could not be recognised; save the file as UTF-8 and upload it again.",
    )


def _decode_cp1252(data: bytes) -> str | None:
    """cp1252 when it plausibly is: charset detection misreads short Western European texts as cp1250 and the like,
    and cp1252 is by far the most common legacy encoding in the offices this reads documents from."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    letters = [ch for ch in text if ch.isalpha()]
    accented = [ch for ch in letters if not ch.isascii()]
    if not letters or len(accented) / len(letters) > MAX_CP1252_ACCENTED_LETTER_RATIO:
        return None
    return text


def _printable_ratio(text: str) -> float:
    if not text:
        return 1.0
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t\f")
    return printable / len(text)


# --- plain text ---------------------------------------------------------------------------------------------

_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")


def _plain_heading_level(paragraph: str, *, is_first: bool, has_title: bool) -> int | None:
    """A standalone short line without closing punctuation, before more text, reads as a heading in plain text.

    Numbered lines take their depth from the number ("2.1 Scope" is level 2 under a title). The first such
    line of the file is its title (level 1); the other unnumbered ones are sections under it.
    """
    line = paragraph.strip()
    if "\n" in line or len(line) > PDF_HEADING_MAX_CHARS or len(line.split()) > PDF_HEADING_MAX_WORDS:
        return None
    if line.endswith((".", ",", ";", ":", "!", "?")) or not line[:1].isalnum() or line[:1].upper() != line[:1]:
        return None
    if not any(ch.isalpha() for ch in line) or _BULLET_LINE.match(line):
        return None
    numbered = _NUMBERED_HEADING.match(line)
    depth = numbered.group(1).count(".") + 1 if numbered else 1
    if is_first and not numbered:
        return 1
    return depth + 1 if has_title else depth


def _parse_plain(data: bytes) -> ParsedDocument:
    text = _strip_invisible(decode_text(data))
    collector = _BlockCollector()
    paragraphs = [p for p in _BLANK_LINES.split(text) if p.strip()]
    title: str | None = None
    if paragraphs and "\n" in paragraphs[0].strip():
        # A first line that reads as a heading, directly above text, is the file's title.
        first_line, rest = paragraphs[0].strip().split("\n", 1)
        # ...unless the next line continues it (a wrapped sentence starts the file).
        continues = rest.strip()[:1].islower()
        if not continues and _plain_heading_level(first_line, is_first=True, has_title=False) == 1:
            paragraphs[0:1] = [first_line, rest]
    for index, paragraph in enumerate(paragraphs):
        lines = [line for line in paragraph.split("\n") if line.strip()]
        is_last = index == len(paragraphs) - 1
        level = None if is_last else _plain_heading_level(paragraph, is_first=index == 0, has_title=title is not None)
        if level is not None:
            if index == 0 and level == 1:
                title = clean_inline(paragraph)
            collector.heading(paragraph, level)
        elif all(_BULLET_LINE.match(line) for line in lines):
            collector.add(LIST, "\n".join(lines))
        else:
            collector.add(PARAGRAPH, paragraph)
    return _finish(collector, PLAIN, title=title)


def _finish(
    collector: _BlockCollector, media_type: str, *, title: str | None, page_count: int | None = None
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


# --- Markdown -----------------------------------------------------------------------------------------------


def _markdown_inline(token: Token) -> str:
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n" if child.type == "hardbreak" else " ")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)


def _parse_markdown(data: bytes) -> ParsedDocument:
    source = decode_text(data)
    front_title = None
    front = _FRONT_MATTER.match(source)
    if front and _YAML_KEY_LINE.match(front.group(1).lstrip()):
        # YAML front matter would otherwise read as a horizontal rule and a setext heading.
        title_match = _FRONT_MATTER_TITLE.search(front.group(1))
        front_title = clean_inline(title_match.group(1)) if title_match else None
        source = source[front.end() :]
    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").parse(source)
    collector = _BlockCollector()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            collector.heading(_markdown_inline(tokens[index + 1]), int(token.tag[1:]))
            index += 3
        elif token.type == "paragraph_open":
            collector.add(PARAGRAPH, _markdown_inline(tokens[index + 1]))
            index += 3
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            end = _matching_close(tokens, index)
            collector.add(LIST, _markdown_list(tokens[index : end + 1]))
            index = end + 1
        elif token.type == "table_open":
            end = _matching_close(tokens, index)
            collector.add(TABLE, _markdown_table(tokens[index : end + 1]))
            index = end + 1
        elif token.type in ("fence", "code_block"):
            collector.add(CODE, token.content)
            index += 1
        elif token.type == "html_block":
            collector.add(PARAGRAPH, _html_fragment_text(token.content))
            index += 1
        else:
            # blockquote and other containers: their paragraphs come through as their own tokens
            index += 1
    return _finish(collector, MARKDOWN, title=collector.first_h1 or front_title)


def _matching_close(tokens: list[Token], start: int) -> int:
    depth = 0
    for index in range(start, len(tokens)):
        depth += tokens[index].nesting
        if depth == 0:
            return index
    return len(tokens) - 1


def _markdown_list(tokens: list[Token]) -> str:
    lines: list[str] = []
    # one counter per open list, so nested numbered lists restart
    counters: list[int | None] = []
    item_open = False
    for token in tokens:
        if token.type in ("bullet_list_open", "ordered_list_open"):
            start = int(token.attrs.get("start", 1) or 1) if token.type == "ordered_list_open" else None
            counters.append(start)
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            counters.pop()
        elif token.type == "list_item_open":
            item_open = True
        elif token.type in ("inline", "fence", "code_block"):
            text = _markdown_inline(token) if token.type == "inline" else token.content
            indent = LIST_INDENT * (len(counters) - 1)
            if item_open:
                number = counters[-1]
                marker = f"{number}." if number is not None else "-"
                if number is not None:
                    counters[-1] = number + 1
                lines.append(f"{indent}{marker} {clean_inline(text)}")
                item_open = False
            else:
                lines.append(f"{indent}{LIST_INDENT}{clean_inline(text)}")
    return "\n".join(lines)


def _markdown_table(tokens: list[Token]) -> str:
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows:
            rows[-1].append(clean_inline(_markdown_inline(token)))
    return "\n".join(" | ".join(row) for row in rows if any(row))


# --- HTML ---------------------------------------------------------------------------------------------------


def _parse_html(data: bytes) -> ParsedDocument:
    declared = HTML_META_CHARSET.search(data[:SNIFF_BYTES])
    text = decode_text(data, declared.group(1).decode("ascii") if declared else None)
    tree = LexborHTMLParser(text)
    page_title_node = tree.css_first("title")
    page_title = clean_inline(page_title_node.text()) if page_title_node is not None else ""
    root = _html_main(tree)
    is_page = root.tag in ("body", "html")
    for selector in HTML_DROPPED_TAGS + (HTML_PAGE_CHROME_TAGS if is_page else ()):
        for node in root.css(selector):
            node.decompose()
    for node in root.css("[hidden], [aria-hidden=true]"):
        node.decompose()
    collector = _BlockCollector()
    _HtmlWalker(collector).walk(root)
    return _finish(collector, HTML, title=collector.first_h1 or page_title or None)


def _html_fragment_text(html: str) -> str:
    """Visible text of raw HTML embedded in Markdown, without scripts, styles and the like."""
    tree = LexborHTMLParser(html)
    for selector in HTML_DROPPED_TAGS:
        for node in tree.css(selector):
            node.decompose()
    return (tree.body.text(separator=" ") if tree.body is not None else "") or ""


def _html_main(tree: LexborHTMLParser) -> LexborNode:
    for selector in ("main", "[role=main]"):
        node = tree.css_first(selector)
        if node is not None:
            return node
    articles = tree.css("article")
    if len(articles) == 1:
        return articles[0]
    # several articles are a listing page: the body holds them all
    return tree.body or tree.root  # type: ignore[return-value]


@dataclass
class _HtmlWalker:
    collector: _BlockCollector
    inline: list[str] = field(default_factory=list)

    def flush(self) -> None:
        if self.inline:
            self.collector.add(PARAGRAPH, "".join(self.inline))
            self.inline = []

    def walk(self, node: LexborNode) -> None:
        for child in _children(node):
            self.visit(child)
        self.flush()

    def visit(self, node: LexborNode) -> None:
        if node.is_text_node:
            self.inline.append(node.text(deep=False) or "")
            return
        tag = node.tag or ""
        if not node.is_element_node:
            return
        if tag == "br":
            self.inline.append("\n")
            return
        if tag not in HTML_BLOCK_TAGS:
            self.inline.append(node.text(deep=True) or "")
            return
        self.flush()
        if tag in HTML_HEADING_LEVELS:
            self.collector.heading(node.text(deep=True) or "", HTML_HEADING_LEVELS[tag])
        elif tag == "p":
            self.collector.add(PARAGRAPH, node.text(deep=True) or "")
        elif tag in ("ul", "ol"):
            self.collector.add(LIST, "\n".join(_html_list_lines(node, 0)))
        elif tag == "dl":
            self.collector.add(LIST, "\n".join(_html_definition_lines(node)))
        elif tag == "pre":
            self.collector.add(CODE, node.text(deep=True) or "")
        elif tag == "table":
            self.collector.add(TABLE, _html_table(node))
        elif tag != "hr":
            self.walk(node)


def _children(node: LexborNode) -> Iterator[LexborNode]:
    yield from node.iter(include_text=True)


def _html_list_lines(node: LexborNode, depth: int) -> list[str]:
    lines = []
    ordered = node.tag == "ol"
    number = 1
    for item in node.iter():
        if item.tag != "li":
            continue
        own: list[str] = []
        nested: list[str] = []
        for child in _children(item):
            if child.tag in ("ul", "ol"):
                nested.extend(_html_list_lines(child, depth + 1))
            else:
                own.append(child.text(deep=True) or "")
        marker = f"{number}." if ordered else "-"
        number += 1
        text = clean_inline("".join(own))
        if text:
            lines.append(f"{LIST_INDENT * depth}{marker} {text}")
        lines.extend(nested)
    return lines


def _html_definition_lines(node: LexborNode) -> list[str]:
    lines = []
    for child in node.iter():
        text = clean_inline(child.text(deep=True) or "")
        if not text:
            continue
        lines.append(f"- {text}" if child.tag == "dt" else f"{LIST_INDENT}{text}")
    return lines


def _html_table(node: LexborNode) -> str:
    rows = []
    for row in node.css("tr"):
        cells = [
            clean_inline(cell.text(deep=True, separator=" ") or "") for cell in row.iter() if cell.tag in ("td", "th")
        ]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# --- DOCX ---------------------------------------------------------------------------------------------------

_DOCX_HEADING_STYLE = re.compile(r"^heading\s+(\d)$", re.IGNORECASE)
# Styles inherit: a custom "Policy Heading" based on "Heading 2" is a level-2 heading.
DOCX_STYLE_INHERITANCE_DEPTH = 4


def _check_zip(data: bytes, *, max_uncompressed_bytes: int, max_ratio: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _corrupt_docx() from exc
    total = sum(member.file_size for member in members)
    compressed = sum(member.compress_size for member in members)
    # Only the sizes recorded in the zip directory are read: checking must not inflate the bomb it looks for.
    too_big = total > max_uncompressed_bytes
    too_dense = total > ZIP_RATIO_MIN_MEMBER_BYTES and total > max_ratio * max(compressed, 1)
    dense_member = any(
        member.file_size > ZIP_RATIO_MIN_MEMBER_BYTES and member.file_size > max_ratio * max(member.compress_size, 1)
        for member in members
    )
    if too_big or too_dense or dense_member:
        raise ParseError(
            "zip_bomb",
            "The Word file would expand to an unreasonable size when opened (a possible zip bomb); "
            "open and re-save it in Word, or ask the author for a normal copy.",
        )
    if "word/document.xml" not in archive.namelist():
        raise _corrupt_docx()
    return archive


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
            cells.append(clean_inline(cell.text))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _parse_docx(data: bytes, *, max_uncompressed_bytes: int, max_ratio: int) -> ParsedDocument:
    _check_zip(data, max_uncompressed_bytes=max_uncompressed_bytes, max_ratio=max_ratio).close()
    try:
        document = docx.Document(io.BytesIO(data))
        items = list(document.iter_inner_content())
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml errors... on damaged parts
        raise _corrupt_docx() from exc
    collector = _BlockCollector()
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
    return _finish(collector, DOCX, title=title or core_title or collector.first_h1)


# --- PDF ----------------------------------------------------------------------------------------------------


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


def _parse_pdf(data: bytes) -> ParsedDocument:
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
    if not any(text.strip() for text in page_texts):
        raise ParseError(
            "image_only_pdf",
            "This PDF contains only images (probably a scan) and no text; run it through OCR to add a text layer "
            "and upload the result.",
        )
    outline = _pdf_outline(reader)
    pages = _drop_running_lines([_pdf_lines(text) for text in page_texts])
    collector = _BlockCollector()
    _PdfLayout(collector, pages, outline).run()
    return _finish(collector, PDF, title=_pdf_title(reader), page_count=page_count)


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
    return [clean_inline(line) for line in _strip_invisible(text).split("\n")]


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
    if len(line) > PDF_HEADING_MAX_CHARS or line.endswith((".", ",", ";", ":", "!", "?")):
        return None
    words = line.split()
    if not words or len(words) > PDF_HEADING_MAX_WORDS or not any(ch.isalpha() for ch in line):
        return None
    numbered = _NUMBERED_HEADING.match(line)
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

    def __init__(self, collector: _BlockCollector, pages: list[list[str]], outline: list[_OutlineEntry]) -> None:
        self.collector = collector
        self.pages = pages
        self.outline = outline
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
            position = 0
            while position < len(lines):
                hit = hits.get(position)
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
        bullet = _BULLET_LINE.match(line)
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

    def flush(self) -> None:
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
    starts = [0, 1] if words and _NUMBERED_HEADING.match(text) else [0]
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
