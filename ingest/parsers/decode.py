"""Text bytes to str: byte order marks, declared charsets, UTF-8, cp1252, then detection; binary is refused."""

from __future__ import annotations

import logging

import charset_normalizer

from ingest.parsers.common import SNIFF_BYTES, ParseError, supported_list

logger = logging.getLogger(__name__)

# Text files have almost no C0 control bytes besides tab/newline/carriage return/form feed; binary formats
# have many. 5% tolerates a stray escape sequence in a log file.
MAX_CONTROL_BYTE_RATIO = 0.05
MIN_PRINTABLE_RATIO = 0.95
# Western European text decoded as cp1252 has few accented letters; Cyrillic or Greek mis-decoded as cp1252
# turns nearly every letter into an accented Latin one. 30% separates the two with a wide margin.
MAX_CP1252_ACCENTED_LETTER_RATIO = 0.3

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def _binary_error() -> ParseError:
    return ParseError(
        "binary",
        f"The file contains binary data, not text; upload the document itself as {supported_list()}.",
    )


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Decode text bytes: byte order mark, then a declared charset, UTF-8, cp1252, then detection."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise _undecodable_error() from exc
    if looks_binary(data[:SNIFF_BYTES]):
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


def looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False  # UTF-16 text with a byte order mark is full of NUL bytes but is still text
    if b"\x00" in head:
        return True
    control = sum(1 for byte in head if byte < 0x20 and byte not in b"\t\n\r\f\x1b")
    return bool(head) and control / len(head) > MAX_CONTROL_BYTE_RATIO
