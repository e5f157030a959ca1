"""The toxic-content detector: the rules on abuse written here and on frustrated but ordinary questions, the
shipped weights, the classifier on clear cases, the held-out figures recorded with the weights, false positives on
the ordinary test questions, the demo corpus, and the answer guard that removes a toxic sentence."""

from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings

from kb.evaluation import train_injection, train_toxicity
from kb.guard.base import Action
from kb.guard.output import TOXIC_REMOVED, OutputContext, ToxicityOutputGuard
from kb.guard.toxicity import (
    RULES,
    candidate_sentence,
    first_rule,
    is_toxic,
    load_model,
    recorded_thresholds,
    toxicity_scores,
)
from kb.search.embeddings import model_id

# Abuse written here (not taken from Davidson), each with the rule that must catch it.
RULE_POSITIVES = [
    ("insult_to_you", "You stupid bot, why can't you find the holiday policy?"),
    ("insult_to_you", "you're a useless piece of shit"),
    ("insult_to_you", "Are you an idiot? I asked about expenses."),
    ("abuse_to_you", "Fuck you and your documents."),
    ("abuse_to_you", "just go kill yourself"),
    ("abuse_to_you", "shut the fuck up and answer"),
    ("slur", "Why do we hire these towelheads in finance?"),
]

# Frustrated, profane or blunt, but real questions an employee may type: none may be blocked.
FRUSTRATED_BUT_ORDINARY = [
    "My damn laptop won't boot again, what do I do?",
    "The bloody VPN keeps dropping, who do I call?",
    "Why the hell is my expense claim still pending after six weeks?",
    "This printer is a piece of junk, how do I report it broken?",
    "Can you tell me how to kill a stuck process on the build server?",
    "How do I report a colleague who called me an idiot in a meeting?",
    "What is the policy on harassment and offensive language at work?",
    "Is it a fag break or a smoking break in the handbook, and where is the smoking area?",
    "How do I fix a chink in the cable insulation safely?",
    "What counts as hate speech under our code of conduct?",
]

# Clear abuse without a rule's wording, for the classifier.
CLASSIFIER_POSITIVES = [
    "all these bitches in HR are worthless hoes",
    "that fat ugly cunt in accounting needs to get slapped",
    "shut up you dumb ass retarded piece of trash",
]


@pytest.mark.parametrize(("rule", "text"), RULE_POSITIVES)
def test_each_rule_catches_its_abuse(rule, text):
    assert first_rule(text) == rule


def test_every_rule_has_a_positive_case():
    assert {name for name, _ in RULES} == {rule for rule, _ in RULE_POSITIVES}


@pytest.mark.parametrize("text", FRUSTRATED_BUT_ORDINARY)
def test_no_rule_fires_on_a_frustrated_but_ordinary_question(text):
    assert first_rule(text) is None


def test_the_shipped_model_matches_the_embedding_model():
    model = load_model()
    assert model.metadata["embedding_model"] == model_id()
    assert model.dimensions == settings.KB_EMBEDDING_DIMENSIONS == model.metadata["dimensions"]
    thresholds = recorded_thresholds()
    assert thresholds["KB_TOXICITY_THRESHOLD"] == settings.KB_TOXICITY_THRESHOLD
    assert thresholds["KB_ANSWER_TOXICITY_THRESHOLD"] == settings.KB_ANSWER_TOXICITY_THRESHOLD


def test_clear_abuse_is_flagged_and_frustrated_questions_pass():
    threshold = settings.KB_TOXICITY_THRESHOLD
    for result, text in zip(toxicity_scores(CLASSIFIER_POSITIVES), CLASSIFIER_POSITIVES, strict=True):
        assert is_toxic(result, threshold), (text, result)
    for result, text in zip(toxicity_scores(FRUSTRATED_BUT_ORDINARY), FRUSTRATED_BUT_ORDINARY, strict=True):
        assert not is_toxic(result, threshold), (text, result)


def test_given_vectors_are_used_and_checked():
    vector = np.zeros((1, load_model().dimensions))
    assert toxicity_scores(["anything"], vector)[0].score == pytest.approx(float(load_model().probabilities(vector)[0]))
    with pytest.raises(ValueError, match="one 384-d vector per text"):
        toxicity_scores(["a", "b"], vector)


def test_the_ordinary_test_questions_are_blocked_at_most_one_percent_of_the_time():
    questions = train_injection._lines(train_injection.ORDINARY_TEST)
    results = toxicity_scores(questions)
    blocked = [q for q, r in zip(questions, results, strict=True) if is_toxic(r, settings.KB_TOXICITY_THRESHOLD)]
    assert len(blocked) <= 0.01 * len(questions), blocked


def test_no_sentence_of_the_demo_corpus_would_be_removed_from_an_answer():
    sentences = [s for chunk in train_injection.demo_chunks() for s in train_toxicity.sentences(chunk)]
    suspects = [s for s in sentences if candidate_sentence(s)]
    flagged = [
        s
        for s, r in zip(suspects, toxicity_scores(suspects), strict=True)
        if is_toxic(r, settings.KB_ANSWER_TOXICITY_THRESHOLD)
    ]
    assert len(sentences) > 100 and flagged == []


def test_the_held_out_figures_recorded_with_the_weights_still_hold():
    """The recorded figures meet the issue's bar, and a fixed part of the held-out sets scores as recorded."""
    if not (train_injection.DEFAULT_EVAL_DIR / train_toxicity.DAVIDSON).is_file():
        pytest.skip(f"the shared evaluation data (Davidson) is not at {train_injection.DEFAULT_EVAL_DIR}")
    metadata = load_model().metadata
    held_out = metadata["held_out"]["questions"]
    assert held_out["davidson_test"]["recall"] >= 0.8
    ordinary = ("employee", "employee_other_author", "ordinary_dev", "ordinary_test", "doc2dial_dev", "demo_golden")
    for source in (*ordinary, "doc2dial_test"):
        assert held_out[source]["fpr"] <= 0.01, (source, held_out[source])
    groups = train_toxicity.check_sets(train_injection.DEFAULT_EVAL_DIR)
    check = train_toxicity.figures(
        train_toxicity.score_sets(groups, load_model(), None), settings.KB_TOXICITY_THRESHOLD
    )
    for source, row in metadata["check"]["questions"].items():
        for key in ("recall", "fpr"):
            if key in row:
                assert check[source][key] == pytest.approx(row[key], abs=0.01), (source, key)


def _output_context(answer: str) -> OutputContext:
    return OutputContext(
        answer=answer, question="q", sources={}, system_prompt="", cited=[], invalid=[], refused=False, model="m"
    )


def test_a_toxic_answer_sentence_is_removed_with_a_notice_and_the_rest_kept():
    context = _output_context(
        "The hotel limit is 180 euros per night [1]. You stupid idiot, read the policy yourself. "
        "Book through the travel portal [2]."
    )
    verdict = ToxicityOutputGuard().scan(context)
    assert verdict.action == Action.MASK and verdict.details["removed"] == 1 and "removed" in verdict.details["notice"]
    assert "idiot" not in context.answer and TOXIC_REMOVED in context.answer
    assert context.answer.startswith("The hotel limit is 180 euros per night [1].")
    assert context.answer.endswith("Book through the travel portal [2].")


def test_an_ordinary_answer_is_left_alone_without_embedding_anything():
    answer = "Expenses are reimbursed within 30 days [1]. Submit receipts through the portal [2]."
    context = _output_context(answer)
    verdict = ToxicityOutputGuard().scan(context)
    assert verdict.action == Action.ALLOW and context.answer == answer
    assert not any(candidate_sentence(s) for s in answer.split(". "))
