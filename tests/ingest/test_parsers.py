import io
import os
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.parsers import (
    CSV,
    DOCX,
    EML,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    PPTX,
    SUPPORTED_MEDIA_TYPES,
    XLSX,
    Block,
    ParsedDocument,
    ParseError,
    document_from_blocks,
    parse,
    sniff_media_type,
)
from ingest.parsers.common import IMAGE_MEDIA_TYPES
from tests.ingest import fixtures_build as build


def assert_readable(error: ParseError) -> None:
    """An admin-facing message: one sentence, capitalised, ending with a full stop, saying what to do."""
    message = error.message
    assert message[0].isupper()
    assert message.endswith(".")
    assert ";" in message or "," in message  # "what happened; what to do"
    assert "Traceback" not in message and "Error(" not in message
    assert str(error) == message


def assert_offsets_match(doc: ParsedDocument) -> None:
    assert len(doc.offsets) == len(doc.blocks)
    for block, (start, end) in zip(doc.blocks, doc.offsets, strict=True):
        assert doc.text[start:end] == block.text
    assert doc.text == "\n\n".join(block.text for block in doc.blocks)


def parse_error(data: bytes, media_type: str, **kwargs: int) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse(data, media_type, **kwargs)
    assert_readable(caught.value)
    return caught.value


def sniff_error(data: bytes, filename: str) -> ParseError:
    with pytest.raises(ParseError) as caught:
        sniff_media_type(data, filename)
    assert_readable(caught.value)
    return caught.value


# --- sniffing -----------------------------------------------------------------------------------------------


def test_supported_media_types_have_human_names():
    assert set(SUPPORTED_MEDIA_TYPES) == {PDF, DOCX, HTML, MARKDOWN, PLAIN, PPTX, XLSX, CSV, EML} | IMAGE_MEDIA_TYPES
    assert all(name for name in SUPPORTED_MEDIA_TYPES.values())


@pytest.mark.parametrize(
    ("maker", "filename", "expected"),
    [
        (build.policy_pdf, "policy.pdf", PDF),
        (build.policy_pdf, "policy", PDF),
        (build.build_docx, "handbook.docx", DOCX),
        (build.build_html, "page.html", HTML),
        (build.build_html, "page", HTML),
        (build.build_markdown, "notes.md", MARKDOWN),
        (build.build_markdown, "NOTES.MARKDOWN", MARKDOWN),
        (build.build_markdown, "notes.txt", PLAIN),
        (build.cp1252_text, "notes.txt", PLAIN),
        (build.cp1252_text, "notes", PLAIN),
    ],
)
def test_sniff_detects_type_from_bytes(maker, filename, expected):
    assert sniff_media_type(maker(), filename) == expected


def test_sniff_uses_only_the_base_name_extension():
    assert sniff_media_type(b"# Title\n", "C:\\docs.pdf\\notes.md") == MARKDOWN


def test_sniff_treats_html_named_txt_as_html():
    assert sniff_media_type(b"<!DOCTYPE html><html><body><p>x</p></body></html>", "page.txt") == HTML


def test_sniff_keeps_markdown_starting_with_a_tag_as_markdown():
    assert sniff_media_type(b'<p align="center">logo</p>\n\n# Project\n', "README.md") == MARKDOWN


def test_sniff_refuses_pdf_that_is_html_as_mislabelled():
    error = sniff_error(build.build_html(), "invoice.pdf")
    assert error.code == "mislabelled"
    assert ".pdf" in error.message and "HTML" in error.message


@pytest.mark.parametrize("maker", [build.elf_bytes, build.pe_bytes])
def test_sniff_refuses_executable_named_pdf_as_mislabelled(maker):
    error = sniff_error(maker(), "report.pdf")
    assert error.code == "mislabelled"
    assert "executable" in error.message


def test_sniff_refuses_pdf_named_docx_as_mislabelled():
    assert sniff_error(build.policy_pdf(), "policy.docx").code == "mislabelled"


def test_sniff_refuses_plain_zip_named_docx_as_mislabelled():
    archive = build.build_zip({"readme.txt": b"hello"})
    assert sniff_error(archive, "handbook.docx").code == "mislabelled"


@pytest.mark.parametrize(
    ("data", "filename", "described"),
    [
        (build.elf_bytes(), "tool", "executable"),
        (build.pe_bytes(), "setup.exe", "executable"),
        (b"GIF89a" + b"\x00" * 64, "anim.gif", "image"),
        (build.build_zip({"a.txt": b"x"}), "bundle.zip", "zip"),
        (build.build_zip({"content.xml": b"<x/>", "mimetype": b"x"}), "budget.ods", "OpenDocument"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "old.doc", "legacy"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 50, "logs.gz", "archive"),
        (bytes(range(256)) * 4, "blob.bin", "binary"),
    ],
)
def test_sniff_refuses_unsupported_types(data, filename, described):
    error = sniff_error(data, filename)
    assert error.code == "unsupported_type"
    assert described in error.message


def test_sniff_legacy_doc_named_doc_is_unsupported_not_mislabelled():
    error = sniff_error(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "old.doc")
    assert "PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, e-mail (.eml)" in error.message


@pytest.mark.parametrize("data", [b"", b"   \n\t ", b"\xef\xbb\xbf  \n"])
def test_sniff_refuses_empty_files(data):
    assert sniff_error(data, "empty.txt").code == "empty"


def test_sniff_does_not_inflate_a_zip_bomb():
    # 300 MB of zeros: reading only the zip directory keeps this instant and small.
    bomb = build.build_docx_bomb(300 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024
    assert sniff_media_type(bomb, "bomb.docx") == DOCX


# --- common rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [PDF, DOCX, HTML, MARKDOWN, PLAIN])
@pytest.mark.parametrize("data", [b"", b" \r\n\t "])
def test_empty_input_is_refused_for_every_type(media_type, data):
    assert parse_error(data, media_type).code == "empty"


def test_unknown_media_type_is_refused():
    assert parse_error(b"data", "image/gif").code == "unsupported_type"


def test_input_above_the_size_limit_is_refused():
    error = parse_error(b"word " * 1000, PLAIN, max_uncompressed_bytes=1024)
    assert error.code == "too_large"


def test_document_from_blocks_computes_matching_offsets_and_drops_empty_blocks():
    blocks = [Block("paragraph", "One.", (), None), Block("paragraph", "  ", (), None), Block("list", "- a", (), None)]
    doc = document_from_blocks(PLAIN, blocks)
    assert doc.text == "One.\n\n- a"
    assert doc.offsets == [(0, 4), (6, 9)]


# --- PDF ----------------------------------------------------------------------------------------------------


def test_pdf_blocks_carry_one_based_page_numbers():
    doc = parse(build.policy_pdf(), PDF)
    assert doc.page_count == 2
    pages = {block.text: block.page for block in doc.blocks}
    assert pages["3 Reimbursement"] == 2
    assert any(page == 1 for page in pages.values())
    assert_offsets_match(doc)


def test_pdf_joins_wrapped_lines_and_removes_line_end_hyphens():
    doc = parse(build.policy_pdf(), PDF)
    paragraphs = [block.text for block in doc.blocks if block.kind == "paragraph"]
    assert (
        "This policy explains how employees book business travel and how the company reimburses the costs of "
        "approved trips. It applies to all permanent staff and contractors."
    ) in paragraphs


def test_pdf_title_comes_from_metadata():
    assert parse(build.policy_pdf(), PDF).title == "Travel Policy"


def test_pdf_numbered_short_lines_become_headings_without_an_outline():
    doc = parse(build.policy_pdf(), PDF)
    headings = [(block.text, block.level) for block in doc.blocks if block.kind == "heading"]
    assert ("2 Booking Rules", 1) in headings
    booking = next(block for block in doc.blocks if block.text.startswith("Book flights"))
    assert booking.heading_path == ("2 Booking Rules",)


def test_pdf_numbered_subsection_heading_is_nested():
    pdf = build.build_pdf(
        [["2 Scope", "The scope is defined below.", "2.1 Systems", "All laptops are covered by this rule."]]
    )
    doc = parse(pdf, PDF)
    body = next(block for block in doc.blocks if block.text.startswith("All laptops"))
    assert body.heading_path == ("2 Scope", "2.1 Systems")


def test_pdf_sentence_continuing_on_next_line_is_not_taken_for_a_heading():
    pdf = build.build_pdf(
        [
            [
                "The committee meets every quarter and reports directly to the Board of",
                "Directors And Shareholders",
                "after each meeting has been held.",
            ]
        ]
    )
    doc = parse(pdf, PDF)
    assert [block.kind for block in doc.blocks] == ["paragraph"]


def test_pdf_outline_builds_heading_paths():
    pdf = build.build_pdf(
        [
            ["Introduction", "Welcome to the guide.", "Scope of", "the Policy", "It covers laptops."],
            ["Second page text without a heading line."],
        ],
        outline=[
            build.OutlineItem("Introduction", 0, [build.OutlineItem("Scope of the Policy", 0)]),
            build.OutlineItem("Appendix", 1),
        ],
    )
    doc = parse(pdf, PDF)
    by_text = {block.text: block for block in doc.blocks}
    assert by_text["It covers laptops."].heading_path == ("Introduction", "Scope of the Policy")
    assert by_text["Scope of the Policy"].kind == "heading"
    assert by_text["Scope of the Policy"].level == 2
    # a bookmark whose title is not printed on its page still opens its section there
    assert by_text["Second page text without a heading line."].heading_path == ("Appendix",)
    assert by_text["Appendix"].page == 2


def test_pdf_bullets_become_one_list_block():
    pdf = build.build_pdf([["Bring the following items.", "\u2022 Passport", "\u2022 Laptop", "\u2022 Badge"]])
    doc = parse(pdf, PDF)
    lists = [block.text for block in doc.blocks if block.kind == "list"]
    assert lists == ["- Passport\n- Laptop\n- Badge"]


def test_pdf_running_headers_and_page_numbers_are_dropped():
    pages = [["ACME Confidential", f"Body text of page {n} ends here.", f"Page {n} of 4"] for n in range(1, 5)]
    doc = parse(build.build_pdf(pages), PDF)
    assert "ACME Confidential" not in doc.text
    assert "Page 1 of 4" not in doc.text
    assert "Body text of page 3 ends here." in doc.text


def test_pdf_with_only_an_owner_password_is_read():
    pdf = build.encrypt_pdf(build.policy_pdf(), user_password="")
    assert "fourteen days" in parse(pdf, PDF).text


def test_encrypted_pdf_is_refused():
    pdf = build.encrypt_pdf(build.policy_pdf(), user_password="secret")
    error = parse_error(pdf, PDF)
    assert error.code == "encrypted_pdf"
    assert "password" in error.message


def test_image_only_pdf_without_legible_text_is_refused_with_each_page_reason():
    # Scans are read by OCR (tests/ingest/test_ocr.py); a grey rectangle has nothing to read.
    pdf = build.build_pdf([[], []], image_only=True)
    error = parse_error(pdf, PDF)
    assert error.code == "ocr_unreadable"
    assert "page 1: no legible text" in error.message and "page 2: no legible text" in error.message


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_pdf_is_refused(keep):
    data = build.policy_pdf()
    assert parse_error(data[: int(len(data) * keep)], PDF).code == "corrupt_pdf"


def test_garbage_after_pdf_header_is_refused_as_corrupt():
    data = b"%PDF-1.7\n" + os.urandom(2000) + b"\n%%EOF\n"
    assert parse_error(data, PDF).code == "corrupt_pdf"


# --- DOCX ---------------------------------------------------------------------------------------------------


def test_docx_headings_build_paths():
    doc = parse(build.build_docx(), DOCX)
    assert_offsets_match(doc)
    request = next(block for block in doc.blocks if block.text.startswith("Ask your manager"))
    assert request.heading_path == ("Leave", "Requesting Leave")
    heading = next(block for block in doc.blocks if block.text == "Requesting Leave")
    assert (heading.kind, heading.level, heading.heading_path) == ("heading", 2, ("Leave", "Requesting Leave"))


def test_docx_title_style_gives_the_title():
    assert parse(build.build_docx(), DOCX).title == "Employee Handbook"


def test_docx_consecutive_list_paragraphs_become_one_list_block():
    doc = parse(build.build_docx(), DOCX)
    lists = [block.text for block in doc.blocks if block.kind == "list"]
    assert lists == ["- Open the HR portal\n- Choose the dates\n- Submit the request", "1. Step one\n2. Step two"]


def test_docx_table_is_rendered_as_rows_of_cells():
    doc = parse(build.build_docx(), DOCX)
    table = next(block for block in doc.blocks if block.kind == "table")
    assert table.text == "Item | Owner\nLaptop | IT\nBadge | Facilities"
    assert table.heading_path == ("Equipment",)


def test_docx_zip_bomb_is_refused_without_inflating_it():
    bomb = build.build_docx_bomb(300 * 1024 * 1024)
    error = parse_error(bomb, DOCX)
    assert error.code == "zip_bomb"


def test_docx_over_uncompressed_limit_is_refused():
    error = parse_error(build.build_docx(), DOCX, max_uncompressed_bytes=10 * 1024)
    assert error.code in ("zip_bomb", "too_large")


def test_docx_over_compression_ratio_is_refused():
    bomb = build.build_docx_bomb(4 * 1024 * 1024)
    assert parse_error(bomb, DOCX, max_compression_ratio=50).code == "zip_bomb"


def test_docx_that_is_not_a_zip_is_corrupt():
    assert parse_error(b"PK\x03\x04 this is not really a zip file", DOCX).code == "corrupt_docx"


def test_docx_truncated_is_corrupt():
    data = build.build_docx()
    assert parse_error(data[: len(data) // 2], DOCX).code == "corrupt_docx"


def _with_unsupported_zip_version(archive: bytes) -> bytes:
    # The central directory's "version needed to extract" (offset 6) set to 8.4: zipfile refuses such an archive
    # with NotImplementedError, not BadZipFile (found by the damaged-files property test).
    data = bytearray(archive)
    at = data.index(b"PK\x01\x02")
    data[at + 6 : at + 8] = (84).to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(("media_type", "code"), [(DOCX, "corrupt_docx"), (XLSX, "corrupt_xlsx")])
def test_a_zip_needing_an_unknown_zip_version_is_corrupt_and_still_sniffed(media_type, code):
    damaged_file = _with_unsupported_zip_version(_VALID[media_type])
    assert parse_error(damaged_file, media_type).code == code
    assert sniff_media_type(damaged_file, _FILENAMES[media_type]) == media_type


def test_zip_without_word_document_is_corrupt_docx():
    archive = build.build_zip({"[Content_Types].xml": b"<Types/>", "word/styles.xml": b"<styles/>"})
    assert parse_error(archive, DOCX).code == "corrupt_docx"


def test_docx_with_broken_document_xml_is_corrupt():
    source = zipfile.ZipFile(io.BytesIO(build.build_docx()))
    entries = {name: source.read(name) for name in source.namelist()}
    entries["word/document.xml"] = b"<w:document><unclosed"
    assert parse_error(build.build_zip(entries), DOCX).code == "corrupt_docx"


# --- HTML ---------------------------------------------------------------------------------------------------


def test_html_drops_scripts_styles_and_page_chrome():
    doc = parse(build.build_html(), HTML)
    for unwanted in ("SECRET_SCRIPT", "color: red", "Menu item", "Intranet home", "Copyright", "Related:", "Search"):
        assert unwanted not in doc.text
    assert "Enable JavaScript" not in doc.text


def test_html_headings_build_paths_and_collapse_whitespace():
    doc = parse(build.build_html(), HTML)
    assert_offsets_match(doc)
    by_text = {block.text: block for block in doc.blocks}
    assert by_text["Claims are paid monthly."].heading_path == ("Expenses",)
    assert by_text["Meals are covered up to 40 EUR per day."].heading_path == ("Expenses", "Meals")


def test_html_lists_tables_and_code_keep_their_shape():
    doc = parse(build.build_html(), HTML)
    kinds = {block.kind: block.text for block in doc.blocks if block.kind != "paragraph"}
    assert kinds["list"] == "- Breakfast\n- Lunch\n  - Only on travel days\n- Dinner"
    assert kinds["table"] == "Kind | Limit\nHotel | 150 EUR"
    assert kinds["code"] == "limit = 150\n  if over: ask()"


def test_html_title_prefers_first_h1_over_title_tag():
    assert parse(build.build_html(), HTML).title == "Expenses"


def test_html_without_main_uses_body_and_title_tag():
    page = b"<html><head><title>Notes</title></head><body><nav>Skip me</nav><div>Loose text <i>here</i>.</div></body>"
    doc = parse(page, HTML)
    assert doc.text == "Loose text here."
    assert doc.title == "Notes"


def test_html_uses_declared_charset():
    page = '<html><head><meta charset="windows-1252"></head><body><p>Caf\u00e9 cr\u00e8me</p></body></html>'
    doc = parse(page.encode("cp1252"), HTML)
    assert doc.text == "Caf\u00e9 cr\u00e8me"


def test_html_without_text_is_no_text():
    error = parse_error(b"<html><body><script>var a = 1;</script><nav>Menu</nav></body></html>", HTML)
    assert error.code == "no_text"


# --- Markdown -----------------------------------------------------------------------------------------------


def test_markdown_atx_and_setext_headings_build_paths():
    doc = parse(build.build_markdown(), MARKDOWN)
    assert_offsets_match(doc)
    deep = next(block for block in doc.blocks if block.text == "Deep text.")
    assert deep.heading_path == ("Onboarding", "Security", "Deep Section")
    setext = next(block for block in doc.blocks if block.text == "Security")
    assert (setext.kind, setext.level) == ("heading", 2)


def test_markdown_front_matter_is_not_content():
    doc = parse(build.build_markdown(), MARKDOWN)
    assert "title:" not in doc.text
    assert doc.title == "Onboarding"


def test_markdown_lists_code_and_tables_are_blocks():
    doc = parse(build.build_markdown(), MARKDOWN)
    blocks = [(block.kind, block.text) for block in doc.blocks if block.kind != "heading"]
    assert ("list", "- Collect laptop\n- Meet buddy\n  - Coffee") in blocks
    assert ("list", "1. Read handbook\n2. Sign contract") in blocks
    assert ("code", 'print("hello")') in blocks
    assert ("table", "Tool | Owner\nVPN | IT") in blocks
    assert ("paragraph", "Welcome to the team. This line wraps.") in blocks


def test_markdown_of_only_headings_keeps_them_as_text():
    doc = parse(b"# Holiday dates 2025\n", MARKDOWN)
    assert [(block.kind, block.text) for block in doc.blocks] == [("paragraph", "Holiday dates 2025")]


# --- plain text ---------------------------------------------------------------------------------------------


def test_plain_cp1252_text_is_decoded_correctly():
    doc = parse(build.cp1252_text(), PLAIN)
    assert [block.text for block in doc.blocks] == [
        "Caf\u00e9 au lait \u2013 na\u00efve r\u00e9sum\u00e9.",
        "The \u201csmart quotes\u201d cost 5 \u20ac.",
    ]


def test_plain_utf8_with_bom_and_crlf():
    doc = parse("\ufeffFirst line\r\nsame paragraph\r\n\r\nSecond".encode(), PLAIN)
    assert [block.text for block in doc.blocks] == ["First line same paragraph", "Second"]


def test_plain_utf16_with_bom():
    doc = parse("\ufeffGr\u00fc\u00dfe aus K\u00f6ln".encode("utf-16-le"), PLAIN)
    assert doc.text == "Gr\u00fc\u00dfe aus K\u00f6ln"


def test_plain_cyrillic_legacy_encoding_is_detected():
    text = "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430? " * 5
    doc = parse(text.encode("cp1251"), PLAIN)
    assert doc.text == text.strip()


def test_plain_normalises_unicode_and_strips_control_characters():
    data = "Cafe\u0301\x07   bar\u200b\tbaz".encode()
    assert parse(data, PLAIN).text == "Caf\u00e9 bar baz"


def test_plain_bullet_paragraph_becomes_list():
    doc = parse(b"Intro.\n\n- one\n- two\n", PLAIN)
    assert [(block.kind, block.text) for block in doc.blocks] == [("paragraph", "Intro."), ("list", "- one\n- two")]


def test_plain_binary_junk_is_refused():
    junk = bytes(range(256)) * 8
    error = parse_error(junk, PLAIN)
    assert error.code == "binary"


def test_plain_random_bytes_are_refused():
    error = parse_error(os.urandom(4096) + b"\x00", PLAIN)
    assert error.code == "binary"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([PLAIN, MARKDOWN, HTML, PDF, DOCX]))
def test_parse_never_raises_anything_but_parse_error(data, media_type):
    try:
        doc = parse(data, media_type)
    except ParseError as error:
        assert error.code and error.message
    else:
        assert_offsets_match(doc)
        assert doc.text.strip()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.sampled_from([PLAIN, MARKDOWN, HTML]))
def test_parse_of_any_text_keeps_offsets_consistent(text, media_type):
    try:
        doc = parse(text.encode(), media_type)
    except ParseError as error:
        assert error.code in ("empty", "no_text", "binary", "unknown_encoding")
    else:
        assert_offsets_match(doc)
        assert all(block.text == block.text.strip() or block.kind == "code" for block in doc.blocks)


def test_sniff_damaged_zip_named_docx_is_left_to_the_docx_parser():
    damaged = build.build_docx()[:500]
    assert sniff_media_type(damaged, "handbook.docx") == DOCX
    assert parse_error(damaged, DOCX).code == "corrupt_docx"


def test_markdown_embedded_html_keeps_text_but_not_scripts():
    doc = parse(b"# T\n\n<div>Visible <script>alert('x')</script>text</div>\n", MARKDOWN)
    assert "Visible" in doc.text and "alert" not in doc.text


def test_markdown_leading_rule_without_yaml_is_not_front_matter():
    doc = parse(b"---\nJust a rule above.\n\n---\n\nBody.\n", MARKDOWN)
    assert "Just a rule above." in doc.text


def test_pdf_chapter_running_header_is_dropped_even_if_only_on_some_pages():
    pages = [[f"Chapter 1: Basics {n}", f"Basics text {n} ends here."] for n in range(1, 4)]
    pages += [[f"Chapter 2: Advanced {n}", f"Advanced text {n} ends here."] for n in range(4, 8)]
    doc = parse(build.build_pdf(pages), PDF)
    assert "Chapter" not in doc.text
    assert "Advanced text 7 ends here." in doc.text


def test_sniff_recognises_docx_from_the_head_of_the_file_alone():
    # Callers may sniff only the first bytes of a big upload, which lack the zip's central directory.
    docx_head = build.build_docx()[:4096]
    assert sniff_media_type(docx_head, "handbook") == DOCX
    xlsx_head = build.build_zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<w/>" * 5000})[:2048]
    assert sniff_media_type(xlsx_head, "budget.xlsx") == XLSX


@pytest.mark.parametrize("text", [b"MZ Bank travel rules apply.\n", b"BZh is how this note starts.\n"])
def test_text_starting_like_a_magic_number_is_still_text(text):
    assert sniff_media_type(text, "notes.txt") == PLAIN


def test_plain_text_headings_are_standalone_short_lines():
    doc = parse(
        b"Leave Policy\nVersion 3, owned by HR.\n\nAnnual leave\n\nYou get 25 days.\n\n2.1 Carry over\n\n"
        b"Five days carry over.\n\nThis line ends the file",
        PLAIN,
    )
    assert doc.title == "Leave Policy"
    paths = {block.text: block.heading_path for block in doc.blocks if block.kind != "heading"}
    assert paths["Version 3, owned by HR."] == ("Leave Policy",)
    assert paths["You get 25 days."] == ("Leave Policy", "Annual leave")
    assert paths["Five days carry over."] == ("Leave Policy", "Annual leave", "2.1 Carry over")
    assert paths["This line ends the file"] == ("Leave Policy", "Annual leave", "2.1 Carry over")


# --- damaged real files -------------------------------------------------------------------------------------
# Random bytes seldom get past a parser's first check; a real file with a few bytes flipped, cut or inserted
# reaches deep into pypdf, python-docx's zip and XML, the HTML parser and the encoding detection.

_VALID = {
    PDF: build.policy_pdf(),
    DOCX: build.build_docx(),
    HTML: build.build_html(),
    MARKDOWN: build.build_markdown(),
    PLAIN: build.cp1252_text(),
    PPTX: build.build_pptx(),
    XLSX: build.build_xlsx(),
    CSV: build.build_csv(20),
    EML: build.build_eml(attachments=[("leave.csv", build.build_csv(3), "text/csv")]),
}
_FILENAMES = {
    PDF: "policy.pdf",
    DOCX: "handbook.docx",
    HTML: "page.html",
    MARKDOWN: "notes.md",
    PLAIN: "notes.txt",
    PPTX: "review.pptx",
    XLSX: "budget.xlsx",
    CSV: "leave.csv",
    EML: "mail.eml",
}


JUNK = st.binary(min_size=1, max_size=64) | st.sampled_from(
    [b"\x00" * 16, b"%%EOF", b"%PDF-1.7\n", b"PK\x03\x04", b"<", b"<html><script>", b"\xff\xfe", b"MZ"]
)


def mutated(draw: st.DrawFn, original: bytes, *, min_edits: int = 1, max_edits: int = 4) -> bytes:
    """`original` with a few bytes flipped, cut, deleted or inserted (shared by the upload fuzzing)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(min_value=min_edits, max_value=max_edits))):
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "truncate", "delete", "insert"]))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=256))]
        else:
            data[at:at] = draw(JUNK)
    return bytes(data)


@st.composite
def damaged(draw: st.DrawFn, media_type: str) -> bytes:
    """The valid `media_type` file with up to four byte flips, cuts, deletions or insertions."""
    return mutated(draw, _VALID[media_type])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
@pytest.mark.parametrize("media_type", sorted(_VALID))
def test_damaged_files_parse_or_fail_with_a_readable_parse_error(media_type, data):
    damaged_file = data.draw(damaged(media_type))
    try:
        doc = parse(damaged_file, media_type)
    except ParseError as error:
        assert error.code
        assert_readable(error)
    else:
        assert_offsets_match(doc)
        assert doc.text.strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_word_files_with_damaged_xml_inside_an_intact_zip_parse_or_fail_readably(data):
    # A damaged zip is caught by its checksums; damage inside the XML reaches python-docx and lxml.
    with zipfile.ZipFile(io.BytesIO(_VALID[DOCX])) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    part = data.draw(st.sampled_from(["word/document.xml", "word/styles.xml", "[Content_Types].xml"]))
    xml = bytearray(entries[part])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(xml) - 1))
        replacement = data.draw(st.sampled_from([b"", b"<", b">", b"&", b"\x00", b"<w:p>", b"</w:body>", b"\xff"]))
        del xml[at : at + data.draw(st.integers(min_value=0, max_value=32))]
        xml[at:at] = replacement
    entries[part] = bytes(xml)
    try:
        doc = parse(build.build_zip(entries), DOCX)
    except ParseError as error:
        assert_readable(error)
    else:
        assert_offsets_match(doc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.text(max_size=40))
@pytest.mark.parametrize("media_type", sorted(_VALID))
def test_sniffing_damaged_files_under_any_name_gives_a_type_or_a_readable_parse_error(media_type, data, name):
    damaged_file = data.draw(damaged(media_type))
    filename = data.draw(st.sampled_from([name, _FILENAMES[media_type], f"{name}.{_FILENAMES[media_type]}"]))
    try:
        sniffed = sniff_media_type(damaged_file, filename)
    except ParseError as error:
        assert_readable(error)
    else:
        assert sniffed in SUPPORTED_MEDIA_TYPES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([PLAIN, MARKDOWN, HTML, PDF, DOCX]))
def test_every_parse_error_on_arbitrary_bytes_is_readable(data, media_type):
    try:
        parse(data, media_type)
    except ParseError as error:
        assert_readable(error)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
@pytest.mark.parametrize(
    ("media_type", "parts"),
    [
        (PPTX, ["ppt/presentation.xml", "ppt/slides/slide2.xml", "ppt/slides/slide3.xml", "[Content_Types].xml"]),
        (XLSX, ["xl/workbook.xml", "xl/worksheets/sheet1.xml", "xl/sharedStrings.xml", "[Content_Types].xml"]),
    ],
)
def test_office_files_with_damaged_xml_inside_an_intact_zip_parse_or_fail_readably(media_type, parts, data):
    with zipfile.ZipFile(io.BytesIO(_VALID[media_type])) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    part = data.draw(st.sampled_from([name for name in parts if name in entries]))
    xml = bytearray(entries[part])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(xml) - 1))
        replacement = data.draw(st.sampled_from([b"", b"<", b">", b"&", b"\x00", b"<row>", b"</sheetData>", b"\xff"]))
        del xml[at : at + data.draw(st.integers(min_value=0, max_value=32))]
        xml[at:at] = replacement
    entries[part] = bytes(xml)
    try:
        doc = parse(build.build_zip(entries), media_type)
    except ParseError as error:
        assert_readable(error)
    else:
        assert_offsets_match(doc)
