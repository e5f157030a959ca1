"""Answers are rendered from markdown and sanitized: model output can never run script or style the page."""

from html.parser import HTMLParser

import pytest

from kb.answers.rendering import answer_html

CITATIONS = [
    {"n": 1, "document_id": 7, "title": "Travel <policy>", "heading": "", "page": "", "chunk_id": 70, "quote": ""}
]


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[click](javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<style>body{display:none}</style>",
        '<div style="position:fixed">x</div>',
        "![x](data:text/html;base64,PHNjcmlwdD4=)",
        "<iframe src='https://evil.example'></iframe>",
        '<svg onload="alert(1)"></svg>',
    ],
)
def test_hostile_markup_is_inert(payload):
    html = answer_html(f"Fact [1]. {payload}", CITATIONS, exchange_id=3)
    elements = Elements()
    elements.feed(html)
    assert {tag for tag, _ in elements.seen} <= {"p", "a"}, html
    for _, attributes in elements.seen:
        for name, value in attributes:
            assert not name.startswith("on") and name != "style", html
            assert not (value or "").strip().lower().startswith(("javascript:", "data:")), html


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, attrs))


def test_links_keep_safe_schemes_and_get_rel_noopener():
    html = answer_html("See [the portal](https://intranet.example/a) or [mail](mailto:hr@example.com).", [], 1)
    assert 'href="https://intranet.example/a"' in html and 'href="mailto:hr@example.com"' in html
    assert html.count('rel="noopener noreferrer"') == 2


def test_citation_markers_become_links_and_unknown_ones_disappear():
    html = answer_html("Hotels cost 180 euros [1]. Unknown [4].", CITATIONS, exchange_id=3)
    assert 'href="/read/7/#chunk-70"' in html and 'data-panel="/exchanges/3/sources/1"' in html
    assert "[4]" not in html and "Travel &lt;policy&gt;" in html


def test_unsupported_sentences_are_marked_not_sourced():
    html = answer_html("A claim nobody made. [unsupported]", [], exchange_id=3)
    assert 'class="unsupported"' in html and "[unsupported]" not in html


def test_a_quoted_table_row_renders_as_a_small_table_with_its_source_link():
    from kb.llm.extractive import render, units_of
    from kb.llm.providers import Passage

    passage = Passage(1, "Travel", "Per diem", "", "City | Meals | Hotel\nLondon <b>x</b> | £55 | £210")
    markdown = render(units_of(passage, 0), [passage])
    html = answer_html(markdown, CITATIONS, exchange_id=3)
    assert "<table>" in html and "<th>City</th>" in html and "<td>£55</td>" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html
    assert 'data-n="1"' in html and "|" not in html


# --- passages (reader, source panel, search results) -----------------------------------------------------------


def test_a_passage_shows_its_table_as_a_table_and_its_prose_as_text():
    from kb.answers.rendering import passage_html

    text = "Per diem *rates* <b>apply</b>.\nSecond line.\n\nCity | Meals | Hotel\nLondon | £55 | £210\nParis | €50 |"
    html = passage_html(text)
    assert html.startswith("<p>Per diem *rates* &lt;b&gt;apply&lt;/b&gt;.<br>Second line.</p><table>")
    assert "<th>City</th><th>Meals</th><th>Hotel</th>" in html
    assert "<td>London</td><td>£55</td><td>£210</td>" in html
    assert "<td>Paris</td><td>€50</td><td></td>" in html  # an empty last cell keeps its column
    assert "|" not in html and "<b>" not in html and "\n<" not in html


def test_one_line_with_a_pipe_is_text_not_a_table():
    from kb.answers.rendering import passage_html

    assert passage_html("Choose yes | no in the form.") == "<p>Choose yes | no in the form.</p>"


def test_a_highlight_is_marked_inside_each_cell_it_covers():
    from kb.answers.rendering import passage_html

    text = "Intro sentence. The quoted one.\n\nCity | Meals\nLondon | £55\nParis | €50"
    quote = text.index("The quoted")
    assert "Intro sentence. <mark>The quoted one.</mark>" in passage_html(text, (quote, quote + 15))
    row = text.index("London")
    html = passage_html(text, (row, row + len("London | £55")))
    assert "<td><mark>London</mark></td><td><mark>£55</mark></td>" in html
    assert "<td>Paris</td>" in html


def test_cell_text_cannot_inject_markup_or_markdown():
    from kb.answers.rendering import passage_html

    html = passage_html("A | B\n<img src=x onerror=alert(1)> | [link](javascript:alert(1))\n**x** | `y`")
    assert "<img" not in html and "<a" not in html and "<strong>" not in html and "<code>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "[link](javascript:alert(1))" in html
