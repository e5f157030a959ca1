"""HTML pages: the main content only (no navigation, scripts or page chrome), walked into blocks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser, LexborNode

from ingest.parsers.common import (
    CODE,
    HTML,
    LIST,
    LIST_INDENT,
    PARAGRAPH,
    SNIFF_BYTES,
    TABLE,
    BlockCollector,
    ParsedDocument,
    clean_inline,
    finish_document,
    table_row,
)
from ingest.parsers.decode import decode_text

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


def parse_html(data: bytes) -> ParsedDocument:
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
    collector = BlockCollector()
    _HtmlWalker(collector).walk(root)
    return finish_document(collector, HTML, title=collector.first_h1 or page_title or None)


def html_fragment_text(html: str) -> str:
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
    collector: BlockCollector
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
        cells = [cell.text(deep=True, separator=" ") or "" for cell in row.iter() if cell.tag in ("td", "th")]
        row_text = table_row(cells)
        if row_text:
            rows.append(row_text)
    return "\n".join(rows)
