"""Turn uploaded bytes into structured text blocks: the pure-logic first step of ingestion.

Nothing here touches the database. `sniff_media_type` decides what a file really is from its bytes, and `parse`
returns a `ParsedDocument` whose blocks keep the structure the chunker splits on (headings, paragraphs, lists,
tables, code) and, for PDFs, the page each block came from. Every input we refuse raises `ParseError` with a
machine code and a sentence an admin can act on.

One module per format (plain, markdown, html, docx, pdf, pptx, xlsx, csv, eml), with `sniff` and `decode` beside
them and the shared types in `common`; this module is the entry point and dispatches by media type.
"""

from __future__ import annotations

from ingest.parsers.common import (
    BLOCK_SEPARATOR,
    CODE,
    CSV,
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_EMAIL_ATTACHMENTS,
    DEFAULT_MAX_TABLE_ROWS,
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    DOCX,
    EML,
    HEADING,
    HTML,
    IMAGE_MEDIA_TYPES,
    LIST,
    MARKDOWN,
    PARAGRAPH,
    PDF,
    PLAIN,
    PPTX,
    SUPPORTED_MEDIA_TYPES,
    TABLE,
    XLSX,
    Attachment,
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
from ingest.parsers.csv import parse_csv
from ingest.parsers.decode import decode_text
from ingest.parsers.docx import parse_docx
from ingest.parsers.eml import parse_eml
from ingest.parsers.html import parse_html
from ingest.parsers.image import parse_image
from ingest.parsers.markdown import parse_markdown
from ingest.parsers.pdf import parse_pdf
from ingest.parsers.plain import parse_plain
from ingest.parsers.pptx import parse_pptx
from ingest.parsers.sniff import sniff_media_type
from ingest.parsers.xlsx import parse_xlsx

__all__ = [
    "BLOCK_SEPARATOR",
    "CODE",
    "CSV",
    "DEFAULT_MAX_COMPRESSION_RATIO",
    "DEFAULT_MAX_EMAIL_ATTACHMENTS",
    "DEFAULT_MAX_TABLE_ROWS",
    "DEFAULT_MAX_UNCOMPRESSED_BYTES",
    "DOCX",
    "EML",
    "HEADING",
    "HTML",
    "LIST",
    "MARKDOWN",
    "PARAGRAPH",
    "PDF",
    "PLAIN",
    "PPTX",
    "SUPPORTED_MEDIA_TYPES",
    "TABLE",
    "XLSX",
    "Attachment",
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
    max_table_rows: int = DEFAULT_MAX_TABLE_ROWS,
    max_email_attachments: int = DEFAULT_MAX_EMAIL_ATTACHMENTS,
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
    if media_type == PPTX:
        return parse_pptx(data, max_uncompressed_bytes=max_uncompressed_bytes, max_ratio=max_compression_ratio)
    if media_type == XLSX:
        return parse_xlsx(
            data,
            max_uncompressed_bytes=max_uncompressed_bytes,
            max_ratio=max_compression_ratio,
            max_rows=max_table_rows,
        )
    if media_type == CSV:
        return parse_csv(data, max_rows=max_table_rows)
    if media_type == EML:
        return parse_eml(data, max_attachments=max_email_attachments)
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
