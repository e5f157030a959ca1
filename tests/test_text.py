"""kb.text helpers that the guards and the extractive answer share: spelling put right towards the passages'
words, and telling English from other languages."""

from __future__ import annotations

import pytest

from kb.text import keyword_spans, keywords, looks_english, respell, word_counts

PASSAGES = [
    "The mileage rate is 0.30 EUR per kilometre. Claims need your manager's approval.",
    "The helpdesk is open Monday to Saturday. A lost access badge costs 15 EUR to replace.",
    "The data protection officer answers privacy questions; a course above 1,500 EUR needs approval.",
]


@pytest.mark.parametrize(
    ("asked", "read"),
    [
        ("whats the milage rate", "whats the mileage rate"),
        ("is the helpdesk open on saterday", "is the helpdesk open on saturday"),
        ("who is our data protecton oficer", "who is our data protection officer"),
        ("i lost my acess badge", "i lost my access badge"),
        ("do i need aproval for a corse", "do i need approval for a course"),
    ],
)
def test_misspelt_words_are_read_as_the_passages_nearest_word(asked, read):
    assert respell(asked, word_counts(PASSAGES)) == read


def test_names_codes_short_words_and_known_words_are_left_alone():
    vocabulary = word_counts(PASSAGES)
    # Capitalised (a city the passages do not list), a code, a short word, and two edits in a short word.
    assert (
        respell("per diem in Paris, code P5, the fee, a bdgae", vocabulary)
        == "per diem in Paris, code P5, the fee, a bdgae"
    )
    # A word the model knows as a word is not "corrected" into a passage's word.
    assert respell("is the helpdesk open on saturdays", vocabulary, known=lambda word: True) == (
        "is the helpdesk open on saturdays"
    )
    assert respell("anything", {}) == "anything"


def test_a_tie_goes_to_the_more_frequent_word():
    assert respell("the cast", {"cost": 5, "case": 1}) == "the cost"


@pytest.mark.parametrize(
    ("text", "english"),
    [
        ("How do I pick a strong passphrase?", True),
        ("lost my fone with the authenticater app on it", True),
        ("hi", True),
        ("yes please", True),
        ("Wann hat die letzte Fußball-WM stattgefunden?", False),
        ("Ich bin auf der Suche nach einem guten Restaurant in München", False),
        ("En que consiste el desembolsos?", False),
    ],
)
def test_english_is_told_by_its_function_words(text, english):
    assert looks_english(text) is english


def test_keyword_spans_are_where_the_keywords_are():
    text = "What's the hotel limit in Dublin, per night?"
    spans = keyword_spans(text)
    # "what", "the" and "in" are stopwords, the "s" of "What's" too short
    assert [text[a:b] for a, b in spans] == ["hotel", "limit", "Dublin", "per", "night"]
    assert {text[a:b].lower()[:5] for a, b in spans} == keywords(text)
