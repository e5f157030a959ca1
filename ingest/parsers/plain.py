"""Plain text: paragraphs split on blank lines; short standalone lines read as headings, bullet lines as lists."""

from __future__ import annotations

import re

from ingest.parsers.common import (
    BULLET_LINE,
    HEADING_MAX_CHARS,
    HEADING_MAX_WORDS,
    LIST,
    NUMBERED_HEADING,
    PARAGRAPH,
    PLAIN,
    BlockCollector,
    ParsedDocument,
    clean_inline,
    finish_document,
    strip_invisible,
)
from ingest.parsers.decode import decode_text

_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")


def _plain_heading_level(paragraph: str, *, is_first: bool, has_title: bool) -> int | None:
    """A standalone short line without closing punctuation, before more text, reads as a heading in plain text.

    Numbered lines take their depth from the number ("2.1 Scope" is level 2 under a title). The first such
    line of the file is its title (level 1); the other unnumbered ones are sections under it.
    """
    line = paragraph.strip()
    if "\n" in line or len(line) > HEADING_MAX_CHARS or len(line.split()) > HEADING_MAX_WORDS:
        return None
    if line.endswith((".", ",", ";", ":", "!", "?")) or not line[:1].isalnum() or line[:1].upper() != line[:1]:
        return None
    if not any(ch.isalpha() for ch in line) or BULLET_LINE.match(line):
        return None
    numbered = NUMBERED_HEADING.match(line)
    depth = numbered.group(1).count(".") + 1 if numbered else 1
    if is_first and not numbered:
        return 1
    return depth + 1 if has_title else depth


def parse_plain(data: bytes) -> ParsedDocument:
    text = strip_invisible(decode_text(data))
    collector = BlockCollector()
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
        elif all(BULLET_LINE.match(line) for line in lines):
            collector.add(LIST, "\n".join(lines))
        else:
            collector.add(PARAGRAPH, paragraph)
    return finish_document(collector, PLAIN, title=title)
