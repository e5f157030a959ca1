from kb.answers.citations import Source, as_shown, best_quote, citations, parse


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


def citation(n: int, title: str) -> dict:
    return {"n": n, "document_id": n * 10, "title": title, "heading": "", "page": "", "chunk_id": n, "quote": ""}


def test_sources_are_shown_numbered_in_order_of_first_use_without_gaps():
    answer = "Hotels cost 180 euros [5]. Trains are preferred [2][7]. Book early [5]."
    shown = as_shown(answer, [citation(5, "Hotels"), citation(2, "Trains"), citation(7, "Booking")])
    assert shown.answer == "Hotels cost 180 euros [1]. Trains are preferred [2][3]. Book early [1]."
    assert [(c["n"], c["passage"], c["title"]) for c in shown.citations] == [
        (1, 5, "Hotels"),
        (2, 2, "Trains"),
        (3, 7, "Booking"),
    ]


def test_grounding_rows_get_the_readers_numbers_and_keep_the_passages_scored():
    grounding = [
        {"sentence": "Hotels cost 180 euros.", "cited": [5], "score": 0.9, "supported": True},
        {"sentence": "Lunch is free.", "cited": [3], "score": 0.1, "supported": False},  # its marker was removed
    ]
    shown = as_shown("Hotels cost 180 euros [5]. Lunch is free [unsupported].", [citation(5, "Hotels")], grounding)
    assert [(row["cited"], row["passages"]) for row in shown.grounding] == [([1], [5]), ([], [3])]


def test_numbering_for_the_reader_twice_changes_nothing():
    once = as_shown("A [4]. B [2; 4]. C [9].", [citation(4, "Four"), citation(2, "Two")])
    assert once.answer == "A [1]. B [2][1]. C."
    twice = as_shown(once.answer, once.citations, once.grounding)
    assert twice == once


def test_a_quoted_table_row_is_cited_by_its_row_not_its_header():
    text = (
        "Daily allowances.\nCity | Meals per day | Hotel per night\nOslo | 67 EUR | 180 EUR\nBergen | 61 EUR | 150 EUR"
    )
    source = Source(4, 40, 400, "Travel", "Allowances", "2", text)
    answer = (
        "*From the documents*\n\n> | City | Meals per day | Hotel per night |\n> | --- | --- | --- |\n"
        "> | Oslo | 67 EUR | 180 EUR |\n>\n> [4]"
    )
    (result,) = citations(answer, [4], {4: source})
    assert "Oslo | 67 EUR" in result["quote"] and "Bergen" not in result["quote"]
