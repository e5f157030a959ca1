"""Stage 8, output guard: a blocking verdict replaces the answer; unsupported sentences are marked; an
uncited answer is flagged; personal data the passages did not contain is masked; every verdict is traced."""

from __future__ import annotations

import numpy as np

from ingest.models import Chunk
from kb.answers import citations as citation_parser
from kb.answers.models import Outcome
from kb.answers.pipeline.output_guard import guard_sources, output_guard
from kb.answers.pipeline.types import Ending
from kb.guard.output import BLOCKED_OUTPUT, TOXIC_REMOVED, UNSUPPORTED
from kb.text import split_sentences
from tests.answers.pipeline.conftest import stage_inputs


def draft_of(inputs, answer: str) -> Ending:
    """The draft as generate hands it on: the answer with its citations parsed against the given passages."""
    parsed = citation_parser.parse(answer, set(inputs.evidence.sources))
    return Ending(
        outcome=Outcome.ANSWERED,
        answer=parsed.answer,
        invalid=parsed.invalid,
        citations=citation_parser.citations(parsed.answer, parsed.cited, inputs.evidence.sources),
        model="anthropic:claude-sonnet-5-5",
    )


def guarded(inputs, answer: str) -> Ending:
    return output_guard(inputs.begun, inputs.evidence, draft_of(inputs, answer))


def verdicts(inputs) -> dict[str, str]:
    return {v["guard"]: v["action"] for v in inputs.trace.verdicts}


def test_a_supported_cited_answer_passes_with_its_grounding(corpus, employee):
    inputs = stage_inputs(employee)
    answer = "The hotel limit is 180 euros per night in Amsterdam [1]."
    ending = guarded(inputs, answer)
    assert ending.outcome == Outcome.ANSWERED and ending.answer == answer and not ending.refused
    assert [c["n"] for c in ending.citations] == [1]
    (sentence,) = ending.grounding
    assert sentence["supported"] and sentence["cited"] == [1]
    assert verdicts(inputs) == {
        "citations": "allow", "leaks": "allow", "grounding": "allow", "toxicity": "allow", "topics": "allow"
    }  # fmt: skip
    assert "output_guards_ms" in inputs.trace.latency and inputs.trace.notices == []


def test_an_abusive_sentence_of_an_answer_is_removed_with_a_notice(corpus, employee):
    inputs = stage_inputs(employee)
    answer = "The hotel limit is 180 euros per night in Amsterdam [1]. Only a stupid bitch would ask that [1]."
    ending = guarded(inputs, answer)
    assert ending.answer.startswith("The hotel limit is 180 euros per night in Amsterdam [1].")
    assert "bitch" not in ending.answer and TOXIC_REMOVED in ending.answer and ending.outcome == Outcome.ANSWERED
    assert verdicts(inputs)["toxicity"] == "mask"
    assert "1 sentence(s) of this answer were removed as offensive language." in inputs.trace.notices


def test_an_unsupported_sentence_is_marked_and_loses_its_citation(corpus, employee):
    inputs = stage_inputs(employee)
    answer = "The hotel limit is 180 euros per night in Amsterdam [1]. The canteen serves free sushi every Friday [1]."
    ending = guarded(inputs, answer)
    assert ending.answer.startswith("The hotel limit is 180 euros per night in Amsterdam [1].")
    assert ending.answer.endswith(f"The canteen serves free sushi every Friday. {UNSUPPORTED}")
    assert [item["supported"] for item in ending.grounding] == [True, False]
    assert verdicts(inputs)["grounding"] == "flag"
    assert inputs.trace.notices == [
        "1 sentence(s) are not supported by the passages they cite and are marked [unsupported]."
    ]


def test_an_answer_citing_nothing_is_flagged_with_a_notice(corpus, employee):
    inputs = stage_inputs(employee)
    ending = guarded(inputs, "Hotels are limited to a sensible amount per night.")
    assert verdicts(inputs)["citations"] == "flag" and ending.citations == []
    assert "This answer cites no source: treat it with care." in inputs.trace.notices
    assert UNSUPPORTED in ending.answer and ending.outcome == Outcome.ANSWERED


def test_an_answer_repeating_the_system_prompt_is_replaced_by_the_block(corpus, employee):
    inputs = stage_inputs(employee)
    ending = guarded(inputs, inputs.evidence.model_request.system[:600])
    assert ending.outcome == Outcome.BLOCKED and ending.refused and ending.refusal_reason == "blocked_leaks"
    assert ending.answer == BLOCKED_OUTPUT.format(reason="the answer repeats the system prompt")
    assert ending.citations == [] and verdicts(inputs)["leaks"] == "block"
    assert "grounding" not in verdicts(inputs), "nothing runs after a block"


def test_text_of_a_document_the_asker_may_not_read_is_blocked(corpus, employee):
    inputs = stage_inputs(employee)
    leaked = "Every parent receives sixteen weeks of paid parental leave, to be taken within the first year [1]."
    ending = guarded(inputs, leaked)
    assert ending.outcome == Outcome.BLOCKED and "may not read" in ending.answer
    leak = next(v for v in inputs.trace.verdicts if v["guard"] == "leaks")
    # The verdict is stored and shown to the asker: it names no document they may not read (issue 17, hole 7).
    assert "document_id" not in leak["details"] and corpus.leave.title not in str(leak)


def test_the_same_text_is_not_a_leak_for_an_asker_who_may_read_it(corpus, hr_employee):
    inputs = stage_inputs(hr_employee, "How many weeks of paid parental leave does a parent receive?")
    leaked = "Every parent receives sixteen weeks of paid parental leave, to be taken within the first year [1]."
    ending = guarded(inputs, leaked)
    assert ending.outcome == Outcome.ANSWERED and verdicts(inputs)["leaks"] == "allow"


def test_personal_data_the_passages_did_not_contain_is_masked(corpus, employee):
    inputs = stage_inputs(employee)
    ending = guarded(inputs, "Ask jane.doe@example.com: the hotel limit is 180 euros per night in Amsterdam [1].")
    assert "jane.doe@example.com" not in ending.answer and "[EMAIL_1]" in ending.answer
    assert verdicts(inputs)["leaks"] == "mask"


def test_each_passage_comes_with_its_stored_vector(corpus, employee):
    evidence = stage_inputs(employee).evidence
    sources = guard_sources(evidence)
    stored = dict(
        Chunk.objects.filter(pk__in=[s.chunk_id for s in evidence.sources.values()]).values_list("pk", "embedding")
    )
    assert set(sources) == set(evidence.sources)
    for n, source in evidence.sources.items():
        assert sources[n].text == source.text
        np.testing.assert_array_equal(
            np.asarray(sources[n].vector, dtype=np.float32), np.asarray(stored[source.chunk_id], dtype=np.float32)
        )


def longest_sentence(text: str) -> str:
    return max((" ".join(text[start:end].split()) for start, end in split_sentences(text)), key=len)


def test_the_answer_and_its_sources_are_numbered_for_the_reader_in_order_of_use(corpus, employee):
    inputs = stage_inputs(employee)
    sources = inputs.evidence.sources
    last = max(sources)
    assert last >= 3, "the corpus gives this question several passages"
    answer = f"{longest_sentence(sources[last].text)} [{last}] {longest_sentence(sources[1].text)} [1]"
    ending = guarded(inputs, answer)
    assert f"[{last}]" not in ending.answer and ending.answer.index("[1]") < ending.answer.index("[2]")
    assert [(c["n"], c["passage"], c["chunk_id"]) for c in ending.citations] == [
        (1, last, sources[last].chunk_id),
        (2, 1, sources[1].chunk_id),
    ]
    assert [(row["cited"], row["passages"]) for row in ending.grounding] == [([1], [last]), ([2], [1])]
