"""E-mail (.eml, RFC 5322 with MIME): the subject is the title, the sender, recipients and date are kept as the
first lines, then the body (the plain-text part, else the HTML one); attachments are returned apart so that
each is indexed as a document of its own, linked to the mail."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage

from ingest.parsers.common import (
    BULLET_LINE,
    EML,
    LIST,
    PARAGRAPH,
    SNIFF_BYTES,
    Attachment,
    BlockCollector,
    ParsedDocument,
    ParseError,
    clean_inline,
    finish_document,
)
from ingest.parsers.html import HTML_META_CHARSET, parse_html

SUBJECT_LEVEL = 1
# The headers a reader asks about ("who sent the mail about X, and when?"); the rest is routing.
EMAIL_HEADERS = ("From", "To", "Cc", "Date")
_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
        return clean_inline(str(value)) if value is not None else ""
    except (ValueError, IndexError, TypeError, AttributeError):  # too malformed for the policy to parse: left out
        return ""


def _attachment_parts(message: EmailMessage) -> Iterator[EmailMessage]:
    for part in message.iter_attachments():
        if part.get_content_maintype() == "multipart":
            yield from _attachment_parts(part)  # type: ignore[arg-type]
        else:
            yield part  # type: ignore[misc]


def _attachment(part: EmailMessage, number: int) -> Attachment | None:
    name = part.get_filename() or ""
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0) if part.is_multipart() else None
        data = inner.as_bytes() if isinstance(inner, EmailMessage) else None
        name = name or f"attached-message-{number}.eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else None
    if not data:
        return None
    return Attachment(filename=name or f"attachment-{number}", data=data)


def _plain_body(collector: BlockCollector, text: str) -> None:
    for paragraph in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        lines = [line for line in paragraph.split("\n") if line.strip()]
        if not lines:
            continue
        if all(BULLET_LINE.match(line) for line in lines):
            collector.add(LIST, "\n".join(lines))
        else:
            collector.add(PARAGRAPH, paragraph)


def _html_body(collector: BlockCollector, part: EmailMessage) -> None:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return
    charset = part.get_content_charset()
    if charset and not HTML_META_CHARSET.search(raw[:SNIFF_BYTES]):
        raw = f'<meta charset="{charset}">'.encode("ascii", "ignore") + raw  # the MIME charset, where HTML reads it
    try:
        body = parse_html(raw)
    except ParseError:
        return  # an HTML part with no text: the mail is its headers (and attachments)
    for block in body.blocks:
        if block.kind == "heading":
            collector.heading(block.text, SUBJECT_LEVEL + block.level)
        else:
            collector.add(block.kind, block.text)


def parse_eml(data: bytes, *, max_attachments: int) -> ParsedDocument:
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(message, EmailMessage):
        raise ParseError("corrupt_eml", "The e-mail could not be read; save it again from your mail program.")
    subject = _header(message, "Subject")
    collector = BlockCollector()
    collector.heading(subject or "(no subject)", SUBJECT_LEVEL)
    parts = list(_attachment_parts(message))
    attachments = [a for a in (_attachment(part, n) for n, part in enumerate(parts, 1)) if a is not None]
    lines = [f"{name}: {value}" for name in EMAIL_HEADERS if (value := _header(message, name))]
    if attachments:
        lines.append("Attachments: " + ", ".join(attachment.filename for attachment in attachments))
    collector.add(LIST, "\n".join(lines))
    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None and body.get_content_type() == "text/plain":
        try:
            _plain_body(collector, str(body.get_content()))
        except (LookupError, ValueError):  # an unknown charset: read it as Latin-1 rather than lose the body
            raw = body.get_payload(decode=True)
            _plain_body(collector, raw.decode("latin-1") if isinstance(raw, bytes) else "")
    elif body is not None:
        _html_body(collector, body)  # type: ignore[arg-type]
    parsed = finish_document(collector, EML, title=subject or None)
    parsed.attachments = attachments[:max_attachments]
    return parsed
