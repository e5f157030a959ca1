import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.filenames import UnsafeFilename, safe_filename


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("/home/alice/report.pdf", "report.pdf"),
        ("C:\\Users\\alice\\Q3 report.docx", "Q3 report.docx"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("dir/../notes.md", "notes.md"),
    ],
)
def test_directories_are_stripped(raw, expected):
    assert safe_filename(raw) == expected


@pytest.mark.parametrize("raw", ["..", ".", "../..", "a/..", "", "   ", "/", "\\", "....", "\x00\x01", "a/ \x7f"])
def test_nothing_usable_left_is_refused_with_a_readable_message(raw):
    with pytest.raises(UnsafeFilename) as caught:
        safe_filename(raw)
    message = caught.value.message
    assert message[0].isupper() and message.endswith(".")
    assert "rename the file" in message
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_control_characters_and_nul_are_removed():
    assert safe_filename("bud\x00get\r\n\t2025.pdf") == "budget2025.pdf"


def test_bidi_override_cannot_disguise_the_extension():
    # U+202E would display "report\u202efdp.exe" as "reportexe.pdf"
    assert safe_filename("report\u202efdp.exe") == "reportfdp.exe"


def test_leading_dots_and_trailing_dots_are_removed():
    assert safe_filename(".hidden.pdf") == "hidden.pdf"
    assert safe_filename("...notes.txt. . ") == "notes.txt"


def test_reserved_characters_are_replaced():
    assert safe_filename('what?: "plan" <v2>|*.md') == "what__ _plan_ _v2___.md"


def test_whitespace_runs_are_collapsed():
    assert safe_filename("  Quarterly \t  report  .pdf") == "Quarterly report .pdf"


def test_unicode_is_nfc_normalised():
    assert safe_filename("Cafe\u0301.pdf") == "Caf\u00e9.pdf"


def test_windows_device_names_are_defused():
    assert safe_filename("CON.txt") == "_CON.txt"
    assert safe_filename("nul") == "_nul"


def test_long_names_are_truncated_keeping_the_extension():
    name = safe_filename("a" * 500 + ".pdf")
    assert name == "a" * 196 + ".pdf"
    assert len(safe_filename("b" * 500 + ".docx", max_length=50)) == 50


def test_long_name_without_extension_is_truncated():
    assert safe_filename("word " * 100, max_length=30) == ("word " * 6).strip()


def test_too_small_max_length_is_a_programming_error():
    with pytest.raises(ValueError, match="max_length"):
        safe_filename("a.pdf", max_length=3)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=17, max_value=255))
def test_result_is_always_a_safe_base_name(raw, max_length):
    try:
        name = safe_filename(raw, max_length=max_length)
    except UnsafeFilename:
        return
    assert name and len(name) <= max_length
    assert "/" not in name and "\\" not in name
    assert not name.startswith(".") and name not in (".", "..")
    assert name == name.strip()
    assert all(ch.isprintable() for ch in name)
