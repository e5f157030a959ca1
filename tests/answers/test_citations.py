from kb.answers.citations import Source, best_quote, citations, parse


def test_valid_markers_are_kept_in_order_of_first_use():
    parsed = parse("B is true [2]. A is true [1][2].", {1, 2})
    assert parsed.cited == [2, 1] and parsed.invalid == [] and parsed.answer == "B is true [2]. A is true [1][2]."


def test_lists_are_split_and_invalid_numbers_removed():
    parsed = parse("Fact [1, 3; 7]. Other fact [9].", {1, 3})
    assert parsed.answer == "Fact [1][3]. Other fact."
    assert parsed.cited == [1, 3] and parsed.invalid == [7, 9]


def test_text_in_brackets_that_is_not_a_marker_is_left_alone():
    parsed = parse("See [the appendix] and [a1].", {1})
    assert parsed.answer == "See [the appendix] and [a1]." and parsed.cited == []


def test_each_citation_quotes_the_sentence_closest_to_the_claim():
    source = Source(1, 10, 20, "Travel", "Hotels", "3", "Book early. The Amsterdam limit is 180 euros. Pay by card.")
    result = citations("Amsterdam hotels are limited to 180 euros [1].", [1], {1: source})
    assert result == [
        {
            "n": 1,
            "document_id": 20,
            "title": "Travel",
            "heading": "Hotels",
            "page": "3",
            "chunk_id": 10,
            "quote": "The Amsterdam limit is 180 euros.",
        }
    ]


def test_a_long_quote_is_shortened():
    assert len(best_quote("word " * 300 + ".", "word")) <= 400
