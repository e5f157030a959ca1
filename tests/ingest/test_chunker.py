import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunker import TABLE_HEADER_MAX_TOKENS, ChunkDraft, chunk_document, wordpiece_counter
from ingest.parsers import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    Block,
    ParsedDocument,
    ParseError,
    document_from_blocks,
    parse,
)
from kb.text import split_sentences
from tests.ingest import fixtures_build as build


def words(text: str) -> int:
    """A fast, predictable token counter: one token per whitespace-separated word."""
    return len(text.split())


def doc_of(*blocks: Block) -> ParsedDocument:
    return document_from_blocks(PLAIN, blocks)


def para(text: str, *path: str, page: int | None = None) -> Block:
    return Block("paragraph", text, tuple(path), page)


def heading(text: str, *path: str, level: int = 1) -> Block:
    return Block("heading", text, (*path, text), None, level)


def sentence(n: int, length: int = 10) -> str:
    """A sentence of exactly `length` words, numbered so that tests can find it."""
    return " ".join([f"S{n}"] + ["word"] * (length - 2) + ["end."])


def own_text(doc: ParsedDocument, chunk: ChunkDraft) -> str:
    return doc.text[chunk.char_start : chunk.char_end]


def sentences_of(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


# --- sentences ----------------------------------------------------------------------------------------------


def test_split_sentences_on_terminal_punctuation():
    assert sentences_of("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]


@pytest.mark.parametrize(
    "text",
    [
        "Ask Dr. Smith about it.",
        "Bring documents, e.g. Passports and visas.",
        "The rate rose to 3.5 percent.",
        "Written by J. R. R. Tolkien in England.",
        "Offices in the U.S. And Canada.",
        "See Fig. 3 for details.",
        "Costs rose by 4% vs. Last year.",
        "The file is called report.v2.pdf today.",
    ],
)
def test_split_sentences_keeps_abbreviations_decimals_and_initials(text):
    assert sentences_of(text) == [text]


def test_split_sentences_handles_quotes_and_newlines():
    text = 'He said "Stop." Then left.\nNew line without stop\nLast.'
    assert sentences_of(text) == ['He said "Stop."', "Then left.", "New line without stop", "Last."]


def test_split_sentences_covers_all_non_space_characters():
    text = "  First one.   Second one...  third? 4.5 done.\n\n  "
    covered = "".join(text[start:end] for start, end in split_sentences(text))
    assert covered.replace(" ", "") == text.replace(" ", "").replace("\n", "")


# --- structure ----------------------------------------------------------------------------------------------


def test_headings_start_new_chunks_and_live_in_heading_path():
    doc = doc_of(
        heading("Leave"),
        para("Short leave text.", "Leave"),
        heading("Sick", "Leave", level=2),
        para("Short sick text.", "Leave", "Sick"),
    )
    chunks = chunk_document(doc, count_tokens=words)
    assert [(c.text, c.heading_path) for c in chunks] == [
        ("Short leave text.", ("Leave",)),
        ("Short sick text.", ("Leave", "Sick")),
    ]
    assert [c.ordinal for c in chunks] == [0, 1]


def test_section_with_only_a_heading_produces_nothing():
    doc = doc_of(heading("Empty"), heading("Full"), para("Body.", "Full"))
    chunks = chunk_document(doc, count_tokens=words)
    assert [(c.text, c.heading_path) for c in chunks] == [("Body.", ("Full",))]


def test_small_blocks_are_packed_together_up_to_target():
    blocks = [para(sentence(n), "S") for n in range(5)]
    chunks = chunk_document(doc_of(*blocks), target_tokens=25, max_tokens=40, overlap_tokens=0, count_tokens=words)
    assert [words(c.text) for c in chunks] == [20, 20, 10]
    # whole paragraphs only: every chunk starts at a paragraph's start
    assert all(c.text.startswith("S") for c in chunks)


def test_block_between_target_and_max_stays_whole():
    big = " ".join(sentence(n) for n in range(3))  # 30 words
    doc = doc_of(para(sentence(9), "S"), para(big, "S"))
    chunks = chunk_document(doc, target_tokens=25, max_tokens=40, overlap_tokens=0, count_tokens=words)
    assert [c.text for c in chunks] == [sentence(9), big]


def test_long_paragraph_splits_only_on_sentence_boundaries():
    text = " ".join(sentence(n) for n in range(20))
    doc = doc_of(para(text, "S"))
    chunks = chunk_document(doc, target_tokens=35, max_tokens=40, overlap_tokens=0, count_tokens=words)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("S") and chunk.text.endswith("end.")
        assert words(chunk.text) <= 35


def test_abbreviations_do_not_cause_splits():
    tricky = "Dr. Smith met Prof. Jones, e.g. At 3.5 p.m. They spoke with J. K. Rowling about No. 5 today."
    text = " ".join([tricky] * 6)
    doc = doc_of(para(text, "S"))
    chunks = chunk_document(doc, target_tokens=25, max_tokens=30, overlap_tokens=0, count_tokens=words)
    assert all(own_text(doc, c) == " ".join([tricky] * (words(own_text(doc, c)) // words(tricky))) for c in chunks)


def test_overlap_repeats_whole_trailing_sentences_within_a_section():
    text = " ".join(sentence(n) for n in range(12))
    doc = doc_of(para(text, "S"))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=12, count_tokens=words)
    assert len(chunks) >= 3
    for previous, chunk in itertools.pairwise(chunks):
        overlap = chunk.text[: len(chunk.text) - len(own_text(doc, chunk))].strip()
        assert overlap == sentences_of(own_text(doc, previous))[-1]
        assert chunk.text.endswith(own_text(doc, chunk))


def test_overlap_never_crosses_a_section_boundary():
    doc = doc_of(
        heading("A"),
        para(" ".join(sentence(n) for n in range(4)), "A"),
        heading("B"),
        para(sentence(7), "B"),
    )
    chunks = chunk_document(doc, target_tokens=20, max_tokens=25, overlap_tokens=10, count_tokens=words)
    assert chunks[-1].text == sentence(7)
    assert chunks[-1].heading_path == ("B",)


def test_overlap_larger_than_budget_is_skipped():
    doc = doc_of(para(" ".join(sentence(n, length=20) for n in range(3)), "S"))
    chunks = chunk_document(doc, target_tokens=20, max_tokens=25, overlap_tokens=10, count_tokens=words)
    assert [c.text for c in chunks] == [sentence(n, length=20) for n in range(3)]


def test_short_list_and_table_stay_whole():
    items = "\n".join(f"- item {n} with words" for n in range(8))
    rows = "\n".join(f"cell {n} | value {n}" for n in range(8))
    doc = doc_of(para(sentence(0), "S"), Block("list", items, ("S",), None), Block("table", rows, ("S",), None))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=0, count_tokens=words)
    assert [c.text for c in chunks] == [sentence(0), items, rows]


def test_long_table_splits_between_rows():
    rows = [f"row {n} | a b c d e f" for n in range(30)]  # 9 words a row
    doc = doc_of(Block("table", "\n".join(rows), ("S",), None))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=0, count_tokens=words)
    assert len(chunks) > 1
    for chunk in chunks:
        assert all(line in rows for line in chunk.text.split("\n"))


@pytest.mark.parametrize("overlap", [0, 12])
def test_every_chunk_that_begins_inside_a_table_repeats_its_header_row(overlap):
    header = "City | Meals per day | Hotel per night"
    rows = [f"Town{n} | €{40 + n} | €{150 + n}" for n in range(40)]
    table = Block("table", "\n".join([header, *rows]), ("S",), None)
    doc = doc_of(para(sentence(0), "S"), table, para(sentence(1), "S"))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=overlap, count_tokens=words)
    with_rows = [chunk for chunk in chunks if "Town" in chunk.text]
    assert len(with_rows) > 2
    for chunk in with_rows:
        lines = chunk.text.split("\n")
        assert header in lines, chunk.text
        assert lines.index(header) < min(lines.index(line) for line in lines if line.startswith("Town"))
        assert chunk.token_count == words(chunk.text)
    assert_tiles_body(doc, chunks)
    assert not any(header in chunk.text for chunk in chunks if "Town" not in chunk.text)


def test_long_list_keeps_sub_items_with_their_item():
    lines = []
    for n in range(10):
        lines += [f"- item {n} alpha beta", f"  - sub {n} gamma delta"]
    doc = doc_of(Block("list", "\n".join(lines), ("S",), None))
    chunks = chunk_document(doc, target_tokens=20, max_tokens=30, overlap_tokens=0, count_tokens=words)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("- item")
        assert chunk.text.rstrip().split("\n")[-1].strip().startswith("- sub")


def test_single_sentence_longer_than_max_splits_on_words():
    long_sentence = " ".join(f"w{n}" for n in range(100)) + "."
    doc = doc_of(para(long_sentence, "S"))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=5, count_tokens=words)
    assert len(chunks) == 4
    assert " ".join(own_text(doc, c) for c in chunks) == long_sentence
    assert all(c.token_count <= 45 for c in chunks)


def test_giant_word_splits_on_characters():
    doc = doc_of(para("x" * 500, "S"))
    chunks = chunk_document(doc, target_tokens=30, max_tokens=40, overlap_tokens=0, count_tokens=len)
    assert "".join(c.text for c in chunks) == "x" * 500
    assert all(c.token_count <= 30 for c in chunks)


def test_page_ranges_follow_the_blocks():
    doc = document_from_blocks(
        PDF,
        [para(sentence(1), page=1), para(sentence(2), page=2), para(sentence(3), page=2), para(sentence(4), page=3)],
    )
    chunks = chunk_document(doc, target_tokens=20, max_tokens=30, overlap_tokens=0, count_tokens=words)
    assert [(c.page_start, c.page_end) for c in chunks] == [(1, 2), (2, 3)]


def test_non_pdf_chunks_have_no_pages():
    chunk = chunk_document(doc_of(para("Hello.")), count_tokens=words)[0]
    assert (chunk.page_start, chunk.page_end) == (None, None)


def test_token_count_is_of_the_final_text():
    doc = doc_of(para(" ".join(sentence(n) for n in range(6)), "S"))
    for chunk in chunk_document(doc, target_tokens=20, max_tokens=30, overlap_tokens=10, count_tokens=words):
        assert chunk.token_count == words(chunk.text)


@pytest.mark.parametrize(("target", "maximum", "overlap"), [(0, 10, 0), (20, 10, 0), (10, 10, 10), (10, 10, -1)])
def test_invalid_sizes_are_refused(target, maximum, overlap):
    with pytest.raises(ValueError):
        chunk_document(doc_of(para("x")), target_tokens=target, max_tokens=maximum, overlap_tokens=overlap)


# --- real tokenizer and parsed documents --------------------------------------------------------------------


def test_wordpiece_counter_counts_without_special_tokens_or_truncation():
    count = wordpiece_counter()
    assert count("hello world") == 2
    # the bundled tokenizer.json truncates at 128; counting must not
    assert count("hello " * 300) == 300
    assert wordpiece_counter() is count


def test_default_counter_keeps_chunks_within_the_model_budget():
    text = " ".join(f"Policy clause {n} requires approval by the finance department before payment." for n in range(80))
    doc = doc_of(para(text, "S"))
    chunks = chunk_document(doc)
    count = wordpiece_counter()
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.token_count == count(chunk.text) <= 256 + 32


def test_chunks_of_a_parsed_pdf_keep_pages_and_headings():
    doc = parse(build.policy_pdf(), PDF)
    chunks = chunk_document(doc, count_tokens=words)
    reimbursement = next(c for c in chunks if "Submit receipts" in c.text)
    assert (reimbursement.page_start, reimbursement.page_end) == (2, 2)
    assert reimbursement.heading_path == ("3 Reimbursement",)


def test_chunks_of_parsed_markdown_cover_the_body():
    doc = parse(build.build_markdown(), MARKDOWN)
    chunks = chunk_document(doc, count_tokens=words)
    assert_tiles_body(doc, chunks)
    assert not any(c.text in ("Onboarding", "First Day") for c in chunks)


# --- properties ---------------------------------------------------------------------------------------------


def assert_tiles_body(doc: ParsedDocument, chunks: list[ChunkDraft]) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    position = 0
    covered: set[int] = set()
    for chunk in chunks:
        assert chunk.text.strip()
        assert position <= chunk.char_start < chunk.char_end
        assert chunk.text.endswith(doc.text[chunk.char_start : chunk.char_end])
        covered.update(range(chunk.char_start, chunk.char_end))
        position = chunk.char_end
    for block, (start, end) in zip(doc.blocks, doc.offsets, strict=True):
        body = range(start, end)
        if block.kind == "heading":
            assert not covered.intersection(body)
        else:
            assert all(index in covered for index in body if not doc.text[index].isspace())


_KINDS = st.sampled_from(["heading", "paragraph", "paragraph", "paragraph", "list", "table", "code"])
_TEXT = st.lists(
    st.text(max_size=20) | st.sampled_from([" ", ". ", "\n", "\n\n", "e.g. ", "Dr. ", "3.5 ", "J. ", "End. Next"]),
    max_size=30,
).map("".join)


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    blocks = []
    path: tuple[str, ...] = ()
    for kind, text in draw(st.lists(st.tuples(_KINDS, _TEXT), max_size=12)):
        if kind == "heading":
            path = (text.strip()[:20] or "h",)
            blocks.append(Block("heading", path[0], path, None, 1))
        else:
            blocks.append(Block(kind, text, path, draw(st.none() | st.integers(1, 5))))
    return document_from_blocks(PLAIN, blocks)


@settings(max_examples=200, deadline=None)
@given(
    documents(),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=15),
)
def test_chunks_tile_the_body_and_respect_budgets(doc, target, extra, overlap):
    maximum = target + extra
    overlap = min(overlap, maximum - 1)
    chunks = chunk_document(doc, target_tokens=target, max_tokens=maximum, overlap_tokens=overlap, count_tokens=words)
    assert_tiles_body(doc, chunks)
    for chunk in chunks:
        # A chunk that begins inside a table also carries the table's header row.
        assert chunk.token_count == words(chunk.text) <= maximum + overlap + TABLE_HEADER_MAX_TOKENS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000), st.integers(min_value=1, max_value=50))
def test_chunking_arbitrary_text_never_crashes(text, target):
    doc = doc_of(para(text, "S"))
    chunks = chunk_document(doc, target_tokens=target, max_tokens=target, overlap_tokens=0, count_tokens=words)
    assert_tiles_body(doc, chunks)
    assert all(c.token_count <= target for c in chunks)


_MARKDOWN_PARTS = st.sampled_from(
    ["# A\n", "## B\n", "- item\n", "  - sub\n", "\n", "| a | b |\n|---|---|\n| 1 | 2 |\n", "```\ncode\n```\n"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_MARKDOWN_PARTS | _TEXT, max_size=15).map("".join))
def test_chunks_of_any_parsed_markdown_tile_the_body(source):
    try:
        doc = parse(source.encode(), MARKDOWN)
    except ParseError:
        return
    chunks = chunk_document(doc, target_tokens=8, max_tokens=12, overlap_tokens=3, count_tokens=words)
    assert_tiles_body(doc, chunks)
    assert all(c.token_count <= 15 + TABLE_HEADER_MAX_TOKENS for c in chunks)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
        min_size=1,
        max_size=30,
    )
)
def test_span_counts_from_one_tokenization_equal_counting_each_span_alone(words):
    from ingest.chunker import wordpiece_counter, wordpiece_span_counter

    text = " ".join(words)
    spans = wordpiece_span_counter(text)
    alone = wordpiece_counter()
    # Chunk boundaries fall on whitespace: every span between two word boundaries must count the same.
    bounds = [0] + [i + 1 for i, ch in enumerate(text) if ch == " "] + [len(text)]
    for i, start in enumerate(bounds):
        for end in bounds[i + 1 : i + 4]:
            span = text[start:end]
            assert spans(start, end) == alone(span), (span, text)


def test_real_documents_chunk_the_same_with_span_counts():
    from pathlib import Path

    from ingest.chunker import chunk_document, wordpiece_counter
    from ingest.parsers import MARKDOWN, parse

    guide = (Path(__file__).resolve().parents[2] / "ingest" / "demo" / "kb-user-guide.md").read_bytes()
    doc = parse(guide, MARKDOWN)
    fast = chunk_document(doc, target_tokens=60, max_tokens=80, overlap_tokens=12)
    slow = chunk_document(doc, target_tokens=60, max_tokens=80, overlap_tokens=12, count_tokens=wordpiece_counter())
    assert fast == slow


# --- extracted text of every format is covered, in order ----------------------------------------------------


def assert_covers_in_order(doc: ParsedDocument, chunks: list[ChunkDraft]) -> None:
    """Every character of the extracted text outside headings (which travel in heading paths) is in exactly
    one chunk's own text, in reading order, modulo whitespace; each chunk's text ends with its own text."""
    body = "".join(
        ch
        for block, (start, end) in zip(doc.blocks, doc.offsets, strict=True)
        if block.kind != "heading"
        for ch in doc.text[start:end]
        if not ch.isspace()
    )
    own = "".join(ch for c in chunks for ch in doc.text[c.char_start : c.char_end] if not ch.isspace())
    assert own == body
    for chunk in chunks:
        assert chunk.text.endswith(doc.text[chunk.char_start : chunk.char_end])
        assert chunk.text.strip()
    headings = {block.text for block in doc.blocks if block.kind == "heading"}
    assert all(set(c.heading_path) <= headings for c in chunks)


_LINES = st.lists(
    st.text(alphabet=st.characters(codec="cp1252", exclude_categories=("Cc", "Cs")), max_size=60)
    | st.sampled_from(["", "1 Scope", "2.1 Limits", "- item", "Dr. Smith paid 3.5 EUR. Then left."]),
    min_size=1,
    max_size=25,
)


def _chunked_with_the_model_tokenizer(doc: ParsedDocument) -> list[ChunkDraft]:
    # The embedding model's own tokenizer (the default) at small sizes, so that even short inputs split.
    return chunk_document(doc, target_tokens=12, max_tokens=16, overlap_tokens=4)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=600), st.sampled_from([PLAIN, MARKDOWN, HTML]))
def test_chunks_of_any_parsed_text_cover_it_in_order(text, media_type):
    try:
        doc = parse(text.encode(), media_type)
    except ParseError:
        return
    assert_covers_in_order(doc, _chunked_with_the_model_tokenizer(doc))


@settings(max_examples=30, deadline=None)
@given(st.lists(_LINES, min_size=1, max_size=3))
def test_chunks_of_a_parsed_pdf_cover_its_text_in_order(pages):
    try:
        doc = parse(build.build_pdf(pages), PDF)
    except ParseError:
        return
    assert_covers_in_order(doc, _chunked_with_the_model_tokenizer(doc))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Normal", "Heading 1", "Heading 2", "List Bullet"]), _LINES), max_size=8))
def test_chunks_of_a_parsed_docx_cover_its_text_in_order(paragraphs):
    import io

    import docx

    document = docx.Document()
    for style, lines in paragraphs:
        document.add_paragraph("\n".join(lines), style=style)
    out = io.BytesIO()
    document.save(out)
    try:
        doc = parse(out.getvalue(), DOCX)
    except ParseError:
        return
    assert_covers_in_order(doc, _chunked_with_the_model_tokenizer(doc))
