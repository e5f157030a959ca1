"""Answers as HTML: markdown through markdown-it-py (raw HTML off), `[n]` markers turned into links to the
cited passage, everything sanitized by nh3 (no script, no event handlers, no styles; links only http, https
and mailto, with rel="noopener noreferrer")."""

from __future__ import annotations

import re

import nh3
from django.urls import reverse
from django.utils.html import escape
from markdown_it import MarkdownIt

from kb.guard.output import UNSUPPORTED

# Tables on: the extractive answer quotes a table row under its header as a small table (kb/llm/extractive.py).
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_MARKER = re.compile(r"\[(\d{1,4})\]")
ALLOWED_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li", "a", "h3", "h4", "h5", "h6", "hr",
    "sup", "span", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "class", "data-n", "data-panel", "aria-label"}, "span": {"class", "aria-label"}}


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )


def answer_html(markdown: str, citations: list[dict], exchange_id: int) -> str:
    """The answer's HTML; each valid `[n]` links to its passage (side panel with JavaScript, the document
    page at that passage without)."""
    by_n = {citation["n"]: citation for citation in citations}
    html = _markdown.render(markdown or "")

    def link(match: re.Match[str]) -> str:
        citation = by_n.get(int(match.group(1)))
        if citation is None:
            return ""  # a marker that names no cited passage is not shown as a source
        href = reverse("document_read", args=[citation["document_id"]]) + f"#chunk-{citation['chunk_id']}"
        panel = reverse("citation_panel", args=[exchange_id, citation["n"]])
        label = escape(f"Source {citation['n']}: {citation['title']}")
        return (
            f'<a class="cite" href="{href}" data-n="{citation["n"]}" data-panel="{panel}" '
            f'aria-label="{label}">[{citation["n"]}]</a>'
        )

    html = _MARKER.sub(link, html)
    # The grounding guard marks sentences that what they cite does not support (kb/guard/output.py).
    badge = (
        '<span class="unsupported" aria-label="Not supported by the cited passages">not supported by the sources</span>'
    )
    html = html.replace(UNSUPPORTED, badge)
    return sanitize(html)
