"""Markdown (CommonMark with tables), read through markdown-it's token stream; YAML front matter gives a title."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ingest.parsers.common import (
    CODE,
    LIST,
    LIST_INDENT,
    MARKDOWN,
    PARAGRAPH,
    TABLE,
    BlockCollector,
    ParsedDocument,
    clean_inline,
    finish_document,
    table_row,
)
from ingest.parsers.decode import decode_text
from ingest.parsers.html import html_fragment_text

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
# A leading "---" block is front matter only if it holds YAML keys; otherwise it is a horizontal rule.
_YAML_KEY_LINE = re.compile(r"^[A-Za-z_][\w-]*\s*:")
_FRONT_MATTER_TITLE = re.compile(r"^title\s*:\s*[\"']?(.+?)[\"']?\s*$", re.MULTILINE)


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


def parse_markdown(data: bytes) -> ParsedDocument:
    source = decode_text(data)
    front_title = None
    front = _FRONT_MATTER.match(source)
    if front and _YAML_KEY_LINE.match(front.group(1).lstrip()):
        # YAML front matter would otherwise read as a horizontal rule and a setext heading.
        title_match = _FRONT_MATTER_TITLE.search(front.group(1))
        front_title = clean_inline(title_match.group(1)) if title_match else None
        source = source[front.end() :]
    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough").parse(source)
    collector = BlockCollector()
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
            collector.add(PARAGRAPH, html_fragment_text(token.content))
            index += 1
        else:
            # blockquote and other containers: their paragraphs come through as their own tokens
            index += 1
    return finish_document(collector, MARKDOWN, title=collector.first_h1 or front_title)


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
    return "\n".join(text for text in map(table_row, rows) if text)
