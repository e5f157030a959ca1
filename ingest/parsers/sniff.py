"""What a file really is, from its bytes: the extension only chooses between Markdown and plain text."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from ingest.parsers.common import (
    CSV,
    DOCX,
    EML,
    HTML,
    JPEG,
    MARKDOWN,
    PDF,
    PLAIN,
    PNG,
    PPTX,
    SNIFF_BYTES,
    TIFF,
    XLSX,
    ZIP_ERRORS,
    ParseError,
    empty_error,
    is_empty,
    supported_list,
)
from ingest.parsers.decode import looks_binary

# The PDF header may follow a little junk (the spec lets readers look this far).
PDF_HEADER_SEARCH_BYTES = 1024

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
    ".png": PNG,
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".tif": TIFF,
    ".tiff": TIFF,
    ".pptx": PPTX,
    ".xlsx": XLSX,
    ".csv": CSV,
    ".tsv": CSV,
    ".eml": EML,
}
# The file name extensions kb reads (what a folder import picks up).
SUPPORTED_EXTENSIONS = frozenset(_EXTENSION_KINDS)
_TEXT_FAMILY = frozenset({HTML, MARKDOWN, PLAIN, CSV, EML})
# Office Open XML files: the part that makes a zip one of them, and the type an unreadable zip with that
# extension is taken for (the parser then says it is damaged).
_OFFICE_MAIN_PARTS = {"word/document.xml": DOCX, "ppt/presentation.xml": PPTX, "xl/workbook.xml": XLSX}
# Parts every Office Open XML file has, whatever its kind.
_OFFICE_SHARED_PARTS = ("[Content_Types]", "_rels/", "docProps/")
_OFFICE_FOLDERS = {DOCX: "word/", PPTX: "ppt/", XLSX: "xl/"}
_OFFICE_DESCRIPTIONS = {DOCX: "a Word document", PPTX: "a PowerPoint presentation", XLSX: "an Excel workbook"}
# A password-protected .docx/.xlsx/.pptx is an OLE compound file holding the encrypted package under this name.
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
# An e-mail starts with header lines; these names tell it from other "Key: value" text (YAML, HTTP dumps).
_MAIL_HEADER = re.compile(rb"^(from|to|subject|date|message-id|received|return-path|mime-version|cc)\s*:", re.I)
_HEADER_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9-]*\s*:|[ \t]+\S)")
MAIL_HEADERS_NEEDED = 2


@dataclass(frozen=True)
class _Detected:
    media_type: str | None  # a supported type, or None when the bytes are something we do not read
    description: str


def _extension(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return PurePosixPath(base).suffix.lower()


def _describe_extension(ext: str) -> str:
    return f"“{ext}”" if ext else "no extension"


_EXECUTABLE_MAGIC = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
    b"\x00asm",
)
# PNG, JPEG, TIFF (both byte orders) are read by OCR; other images are refused.
_OCR_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
_IMAGE_MAGIC = (b"GIF87a", b"GIF89a")
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
        if _ENCRYPTED_PACKAGE in data:
            raise ParseError(
                "encrypted_office",
                "The file is password-protected; open it, remove the password (File > Info > Protect) and upload "
                "it again.",
            )
        return _Detected(None, "a legacy or password-protected Office file (.doc, .xls or .ppt)")
    if head.startswith(_EXECUTABLE_MAGIC) or (head.startswith(b"MZ") and b"\x00" in head[:_DOS_HEADER_BYTES]):
        return _Detected(None, "an executable program")
    if head.startswith(_OCR_IMAGE_MAGIC[0]):
        return _Detected(PNG, "a PNG image")
    if head.startswith(_OCR_IMAGE_MAGIC[1]):
        return _Detected(JPEG, "a JPEG image")
    if head.startswith(_OCR_IMAGE_MAGIC[2:]):
        return _Detected(TIFF, "a TIFF image")
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return _Detected(None, "an image")
    if head.startswith(_ARCHIVE_MAGIC) or _BZIP2_MAGIC.match(head):
        return _Detected(None, "a compressed archive")
    if head.startswith(b"{\\rtf"):
        return _Detected(None, "a rich-text (RTF) document")
    if looks_binary(head):
        return _Detected(None, "binary data")
    if _looks_like_html(head, ext):
        return _Detected(HTML, "an HTML page")
    if (ext == ".eml" or ext not in _EXTENSION_KINDS) and _looks_like_mail(head):
        return _Detected(EML, "an e-mail")
    if ext in (".csv", ".tsv"):
        return _Detected(CSV, "a CSV table")
    return _Detected(MARKDOWN if ext in (".md", ".markdown") else PLAIN, "text")


def _detect_zip(data: bytes, ext: str) -> _Detected:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except ZIP_ERRORS:
        # The directory sits at the end of a zip, so a truncated file (or just the head of an upload) has none;
        # the local headers at the start still name the first members, and Office writes its main part early.
        names = _zip_local_names(data)
    for part, media_type in _OFFICE_MAIN_PARTS.items():
        if part in names:
            return _Detected(media_type, _OFFICE_DESCRIPTIONS[media_type])
    for media_type, folder in _OFFICE_FOLDERS.items():
        # Only the head of a big file was read, or the file is damaged: its folders still say what it is.
        if any(name.startswith(folder) for name in names):
            return _Detected(media_type, _OFFICE_DESCRIPTIONS[media_type])
    claimed = _EXTENSION_KINDS.get(ext)
    if claimed in _OFFICE_FOLDERS and all(name.startswith(_OFFICE_SHARED_PARTS) for name in names):
        return _Detected(claimed, _OFFICE_DESCRIPTIONS[claimed])  # damaged: the parser will say so
    if "content.xml" in names or "mimetype" in names:
        return _Detected(None, "an OpenDocument file")
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


_HTML_STRONG_START = re.compile(rb"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>])", re.I | re.S)
_HTML_WEAK_START = re.compile(
    rb"^(?:<!--.*?-->\s*)*<(?:head|body|title|meta|div|p|h[1-6]|table|section|article|main|ul|ol|a|b|br|font"
    rb"|script|style|iframe)[\s/>]",
    re.I | re.S,
)


def _looks_like_mail(head: bytes) -> bool:
    """Header lines from the first line to a blank one, enough of them mail headers."""
    lines = head.lstrip(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").split(b"\n")
    known = 0
    for line in lines[:-1]:  # the last may be cut off by the sniffing window
        if not line.strip():
            return known >= MAIL_HEADERS_NEEDED
        if not _HEADER_LINE.match(line):
            return False
        known += bool(_MAIL_HEADER.match(line))
    return known >= MAIL_HEADERS_NEEDED


_NAMED_TEXT = (".md", ".markdown", ".txt", ".text", ".csv", ".tsv", ".eml")


def _looks_like_html(head: bytes, ext: str) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if _HTML_STRONG_START.match(start):
        return True
    # Markdown and text files legitimately start with a tag now and then (README badges); only trust the weak
    # signal when the name does not say what the file is.
    return ext not in (".md", ".markdown", ".txt", ".text", ".csv", ".tsv", ".eml") and bool(
        _HTML_WEAK_START.match(start)
    )


def sniff_media_type(data: bytes, filename: str) -> str:
    """Media type from the bytes, the extension only choosing between Markdown and plain text."""
    if is_empty(data):
        raise empty_error()
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
            f"The file contains {detected.description}, which cannot be indexed; upload it as {supported_list()}.",
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
