import pytest

from kb.answers.followup import standalone_query

HOTEL = "What is the hotel limit per night in Amsterdam?"


@pytest.mark.parametrize(
    ("question", "previous", "expected"),
    [
        ("And in Rotterdam?", HOTEL, "What is the hotel limit per night in Rotterdam?"),
        ("what about in Rotterdam", HOTEL, "What is the hotel limit per night in Rotterdam?"),
        (
            "And for contractors?",
            "How many vacation days do employees get?",
            "How many vacation days do employees get for contractors",
        ),
        ("And for contractors?", "How many vacation days for employees?", "How many vacation days for contractors?"),
        ("How about trains?", "Do flights need approval", "Do flights need approval trains"),
        ("Is it paid?", "How long is parental leave", "How long is parental leave Is it paid?"),
        ("Who approves it?", "How do I book a flight?", "How do I book a flight Who approves it?"),
        (
            "How do I reset my VPN password on a company laptop?",
            HOTEL,
            "How do I reset my VPN password on a company laptop?",
        ),
        ("And in Rotterdam?", None, "And in Rotterdam?"),
    ],
)
def test_follow_ups_become_standalone_queries(question, previous, expected):
    assert standalone_query(question, previous) == expected


def test_chained_follow_ups_build_on_the_last_standalone_query():
    second = standalone_query("And in Rotterdam?", HOTEL)
    assert standalone_query("and in Utrecht", second) == "What is the hotel limit per night in Utrecht?"


def test_a_conversation_s_queries_are_made_turn_after_turn():
    from kb.answers.followup import standalone_queries

    queries = standalone_queries(["What is the hotel limit in Amsterdam?", "And in Rotterdam?", "and in Utrecht?"])
    assert queries == [
        "What is the hotel limit in Amsterdam?",
        "What is the hotel limit in Rotterdam?",
        "What is the hotel limit in Utrecht?",
    ]
    assert standalone_queries(["And in Rotterdam?"], "What is the hotel limit in Amsterdam?") == queries[1:2]


def test_a_conversation_is_searched_from_its_normalised_first_question():
    from kb.answers.followup import search_queries

    assert search_queries(["What is the hotel limit per night in Amsterdam?", "And in Rotterdam?"]) == [
        "what is the hotel limit per night in amsterdam",
        "what is the hotel limit per night in Rotterdam",
    ]
    assert search_queries([]) == []
