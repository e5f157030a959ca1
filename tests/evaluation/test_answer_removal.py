"""The answer taken out (`kb.evaluation.answers.removal`): a near miss made from an answerable question by removing
the units that state its facts. The probe runs the real extractive answerer (and so the real embedding model)."""

from kb.evaluation.answers import metrics, removal
from kb.llm.providers import Passage

PER_DIEM = Passage(
    1,
    "Travel and expenses",
    "Per-diem rates",
    "",
    "Per-diem rates cover meals and incidentals for each night away.\n\n"
    "City | Meals per day | Hotel per night\n"
    "London | £55 | £210\n"
    "Paris | €60 | €190\n\n"
    "For cities not listed, ask the Finance travel desk before you book.",
)
LEAVE = Passage(
    2,
    "Leave policy",
    "Parental leave",
    "",
    "Partners get ten days of paid leave after a birth. It can be taken\nin two blocks within eight weeks. "
    "Ask HR for the form.",
)


def test_the_row_that_states_the_fact_goes_and_the_table_stays():
    (per_diem, leave) = removal.without_facts([PER_DIEM, LEAVE], ["£55"])
    assert "London" not in per_diem.text
    assert "City | Meals per day | Hotel per night\nParis | €60 | €190" in per_diem.text
    assert "ask the Finance travel desk" in per_diem.text and leave == LEAVE


def test_a_row_with_uneven_spacing_goes_too():
    spaced = Passage(1, "Travel", "Mileage", "", "Vehicle | Rate\nCar  |  45p a mile\nBicycle | 20p a mile")
    (copy,) = removal.without_facts([spaced], ["45p a mile"])
    assert copy.text == "Vehicle | Rate\nBicycle | 20p a mile"


def test_a_sentence_goes_even_when_the_document_broke_its_line():
    (_, leave) = removal.without_facts([PER_DIEM, LEAVE], ["within eight weeks"])
    assert "eight weeks" not in leave.text and "two blocks" not in leave.text
    assert leave.text.startswith("Partners get ten days") and leave.text.rstrip().endswith("Ask HR for the form.")


def test_no_copy_when_nothing_states_the_fact_or_it_is_still_stated():
    assert removal.without_facts([PER_DIEM, LEAVE], ["£99"]) is None  # nothing to take out
    assert removal.without_facts([PER_DIEM, LEAVE], []) is None
    # The heading says it too: taking out the sentence would not make a near miss.
    assert removal.without_facts([PER_DIEM, LEAVE], ["parental leave"]) is None
    # Only whole words in order count as stating it.
    assert not metrics.fact_in_order("55", "£550 a night") and metrics.fact_in_order("£55", "London | £55 | £210")


def test_the_probe_reads_the_extractive_decision_with_and_without_the_answer():
    found = removal.probe("How much can I spend on meals a day in London?", [PER_DIEM, LEAVE], ["£55"])
    assert found is not None and found.answered_with
    assert removal.probe("How much can I spend on meals a day in London?", [PER_DIEM, LEAVE], ["£99"]) is None


def test_the_rate_counts_only_questions_answered_with_their_answer():
    def record(probe: dict | None, **overrides) -> dict:
        base = {
            "kind": "lookup", "answerable": True, "injection": False, "expected_docs": ["a.md"], "section": None,
            "outcome": "answered", "declined": False, "hit_rank": 1, "section_hit": None, "cited_total": 1,
            "cited_expected": 1, "must_include": {"found": ["x"], "missing": []}, "leaked_prompt": False,
            "fallback_used": False, "latency_ms": 10.0, "usage": {}, "cost_usd": 0.0,
            "context_facts": {"found": ["x"], "missing": []}, "answer_f1": 1.0, "answer_removed": probe,
        }  # fmt: skip
        return {**base, **overrides}

    records = [
        record({"answered_with": True, "answered_without": True}),  # a near miss answered anyway
        record({"answered_with": True, "answered_without": False}),
        record({"answered_with": True, "answered_without": False}),
        record({"answered_with": False, "answered_without": None}),  # refused as given: not counted
        record(None),  # not probed
        record(None, kind="near_miss", answerable=False),
    ]
    result = metrics.summarise(records, k=8, guard_available=True)
    assert result["answer_removed_questions"] == 3 and result["answered_without_answer"] == round(1 / 3, 4)
    assert metrics.summarise(records[3:], k=8, guard_available=True)["answered_without_answer"] is None


def test_a_follow_up_is_probed_with_its_query_only_after_an_answered_turn(employee):
    from datetime import timedelta

    from django.utils import timezone

    from kb.answers.models import Conversation, Exchange, Outcome
    from kb.evaluation.answers.runner import _followed

    conversation = Conversation.objects.create(user=employee, title="Per-diem")
    now = timezone.now()

    def asked(seconds: int, outcome: str) -> Exchange:
        at = now + timedelta(seconds=seconds)
        return Exchange.objects.create(
            user=employee, conversation=conversation, question="q", search_query="q", answer="a",
            outcome=outcome, created_at=at, finished_at=at,
        )  # fmt: skip

    first = asked(0, Outcome.REFUSED)
    second = asked(1, Outcome.ANSWERED)
    third = asked(2, Outcome.ANSWERED)
    assert not _followed(first) and not _followed(second)  # nothing answered before them: read as asked
    assert _followed(third)
    assert not _followed(Exchange.objects.create(user=employee, question="q", answer="a", outcome=Outcome.ANSWERED))
