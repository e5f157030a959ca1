"""Turn uploaded bytes into structured text blocks: the pure-logic first step of ingestion.

Nothing here touches the database. `sniff_media_type` decides what a file really is from its bytes, and `parse`
returns a `ParsedDocument` whose blocks keep the structure the chunker splits on (headings, paragraphs, lists,
tables, code) and, for PDFs, the page each block came from. Every input we refuse raises `ParseError` with a
machine code and a sentence an admin can act on.

One module per format (plain, markdown, html, docx, pdf), with `sniff` and `decode` beside them and the shared
types in `common`; this module is the entry point and dispatches by media type.
"""

from __future__ import annotations

from ingest.parsers.common import (
    BLOCK_SEPARATOR,
    CODE,
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    DOCX,
    HEADING,
    HTML,
    IMAGE_MEDIA_TYPES,
    LIST,
    MARKDOWN,
    PARAGRAPH,
    PDF,
    PLAIN,
    SUPPORTED_MEDIA_TYPES,
    TABLE,
    Block,
    ParsedDocument,
    ParseError,
    clean_code,
    clean_inline,
    clean_lines,
    document_from_blocks,
    empty_error,
    is_empty,
    supported_list,
)
from ingest.parsers.decode import decode_text
from ingest.parsers.docx import parse_docx
from ingest.parsers.html import parse_html
from ingest.parsers.image import parse_image
from ingest.parsers.markdown import parse_markdown
from ingest.parsers.pdf import parse_pdf
from ingest.parsers.plain import parse_plain
from ingest.parsers.sniff import sniff_media_type

__all__ = [
    "BLOCK_SEPARATOR",
    "CODE",
    "DEFAULT_MAX_COMPRESSION_RATIO",
    "DEFAULT_MAX_UNCOMPRESSED_BYTES",
    "DOCX",
    "HEADING",
    "HTML",
    "LIST",
    "MARKDOWN",
    "PARAGRAPH",
    "PDF",
    "PLAIN",
    "SUPPORTED_MEDIA_TYPES",
    "TABLE",
    "Block",
    "ParseError",
    "ParsedDocument",
    "clean_code",
    "clean_inline",
    "clean_lines",
    "decode_text",
    "document_from_blocks",
    "parse",
    "sniff_media_type",
]


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def parse(
    data: bytes,
    media_type: str,
    *,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO,
) -> ParsedDocument:
    """Parse `data` as `media_type` (usually from `sniff_media_type`); raise ParseError for every bad input."""
    if is_empty(data):
        raise empty_error()
    if len(data) > max_uncompressed_bytes:
        raise ParseError(
            "too_large",
            f"The file is {_megabytes(len(data))}, above the {_megabytes(max_uncompressed_bytes)} limit; "
            "split it into smaller documents and upload those.",
        )
    if media_type == PDF:
        return parse_pdf(data)
    if media_type == DOCX:
        return parse_docx(data, max_uncompressed_bytes=max_uncompressed_bytes, max_ratio=max_compression_ratio)
    if media_type == HTML:
        return parse_html(data)
    if media_type == MARKDOWN:
        return parse_markdown(data)
    if media_type == PLAIN:
        return parse_plain(data)
    if media_type in IMAGE_MEDIA_TYPES:
        return parse_image(data, media_type)
    raise ParseError(
        "unsupported_type", f"Files of type {media_type!r} cannot be indexed; upload them as {supported_list()}."
    )
