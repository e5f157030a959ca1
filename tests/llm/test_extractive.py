from kb.llm.providers import EXTRACTIVE_LABEL, Passage, extractive_answer

PASSAGES = [
    Passage(
        1, "Travel", "Hotels", "", "Book through the travel desk. The hotel limit in Amsterdam is 180 euros a night."
    ),
    Passage(2, "Travel", "Trains", "", "Trains are used for journeys under six hours. Flights need a director."),
    Passage(3, "Canteen", "", "", "The canteen opens at noon."),
]


def test_it_quotes_the_matching_sentences_with_their_passage_numbers():
    answer = extractive_answer("What is the hotel limit in Amsterdam?", PASSAGES)
    assert answer.startswith(f"*{EXTRACTIVE_LABEL}*")
    assert "> The hotel limit in Amsterdam is 180 euros a night. [1]" in answer
    assert "canteen" not in answer.lower()


def test_sentences_from_several_passages_keep_retrieval_order():
    answer = extractive_answer("hotel limit, and do flights need a director?", PASSAGES)
    assert answer.index("[1]") < answer.index("[2]")


def test_with_no_overlap_it_quotes_the_best_passage_s_first_sentence():
    answer = extractive_answer("zzz qqq", PASSAGES)
    assert "Book through the travel desk. [1]" in answer


def test_no_passages_no_answer():
    assert extractive_answer("anything", []) == ""
