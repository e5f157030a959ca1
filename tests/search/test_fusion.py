"""Reciprocal rank fusion, pure: no database."""

from __future__ import annotations

import pytest

from kb.search.fusion import reciprocal_rank_fusion, with_legs_best


def test_scores_are_the_sum_of_reciprocal_ranks():
    fused = reciprocal_rank_fusion({"vector": ["a", "b", "c"], "bm25": ["b", "d"]}, k=60)
    scores = {item.key: item.score for item in fused}
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    assert scores["c"] == pytest.approx(1 / 63)
    assert [item.key for item in fused] == ["b", "a", "d", "c"]


def test_every_item_carries_its_rank_in_each_leg_that_returned_it():
    fused = {item.key: item.ranks for item in reciprocal_rank_fusion({"vector": ["a", "b"], "bm25": ["b", "c"]})}
    assert fused == {"a": {"vector": 1}, "b": {"vector": 2, "bm25": 1}, "c": {"bm25": 2}}


def test_an_item_found_by_both_legs_beats_one_found_by_a_single_leg_at_the_same_rank():
    fused = reciprocal_rank_fusion({"vector": ["x", "both"], "bm25": ["y", "both"]})
    assert fused[0].key == "both"


def test_ties_are_broken_by_best_rank_then_leg_order():
    fused = reciprocal_rank_fusion({"vector": ["v1", "v2"], "bm25": ["b1", "b2"]})
    assert [item.key for item in fused] == ["v1", "b1", "v2", "b2"]


def test_weights_scale_a_leg():
    fused = reciprocal_rank_fusion({"vector": ["v"], "bm25": ["b"]}, weights={"vector": 0.5, "bm25": 2.0})
    assert [item.key for item in fused] == ["b", "v"]
    assert fused[0].score == pytest.approx(2 / 61)


def test_a_zero_weight_leg_only_contributes_ranks():
    fused = reciprocal_rank_fusion({"vector": ["v", "b"], "bm25": ["b"]}, weights={"bm25": 0.0})
    assert [item.key for item in fused] == ["v", "b"]
    assert fused[1].ranks == {"vector": 2, "bm25": 1}


def test_a_smaller_k_favours_top_ranks():
    rankings = {"vector": ["a", "b"], "bm25": ["x", "y", "b"]}
    # a is first in one leg; b is second and third: a small k rewards the top rank, a large one agreement.
    assert reciprocal_rank_fusion(rankings, k=0)[0].key == "a"
    assert reciprocal_rank_fusion(rankings, k=1000)[0].key == "b"


def test_limit_keeps_the_best():
    fused = reciprocal_rank_fusion({"vector": list("abcdef")}, limit=3)
    assert [item.key for item in fused] == ["a", "b", "c"]


def test_a_repeated_item_within_a_leg_counts_once_at_its_best_rank():
    fused = reciprocal_rank_fusion({"vector": ["a", "a", "b"]}, k=60)
    assert fused[0].score == pytest.approx(1 / 61)
    assert fused[0].ranks == {"vector": 1}
    assert fused[1].ranks == {"vector": 3}


def test_empty_legs_give_nothing():
    assert reciprocal_rank_fusion({}) == []
    assert reciprocal_rank_fusion({"vector": [], "bm25": []}) == []


def test_a_negative_k_is_refused():
    with pytest.raises(ValueError, match="must not be negative"):
        reciprocal_rank_fusion({"vector": ["a"]}, k=-1)


# Three chunks both legs find, one only the vector leg ranks first, one only BM25 ranks last.
BURIED = {"vector": ["v1", "c1", "c2", "c3"], "bm25": ["c1", "c2", "c3", "b1"]}


def test_fusion_buries_a_chunk_only_one_leg_ranks_first():
    assert [item.key for item in reciprocal_rank_fusion(BURIED)] == ["c1", "c2", "c3", "v1", "b1"]


def test_without_fill_the_legs_best_are_fusions_first_k():
    fused = reciprocal_rank_fusion(BURIED)
    assert with_legs_best(fused, BURIED, 3, 0) == fused[:3]


def test_the_last_places_go_to_each_legs_best_not_yet_chosen_vector_first():
    fused = reciprocal_rank_fusion(BURIED)
    assert [item.key for item in with_legs_best(fused, BURIED, 3, 1)] == ["c1", "c2", "v1"]
    # BM25's best two are chosen already: its next is c3, ahead of b1.
    assert [item.key for item in with_legs_best(fused, BURIED, 4, 2)] == ["c1", "c2", "v1", "c3"]
    chosen = with_legs_best(fused, BURIED, 3, 1)
    assert chosen[-1].ranks == {"vector": 1} and chosen[-1].score == pytest.approx(1 / 61)


def test_the_legs_take_turns():
    rankings = {"vector": ["v1", "v2", "c"], "bm25": ["b1", "b2", "c"]}
    fused = reciprocal_rank_fusion(rankings)
    assert [item.key for item in fused[:3]] == ["c", "v1", "b1"]
    assert [item.key for item in with_legs_best(fused, rankings, 3, 2)] == ["c", "v1", "b1"]
    assert [item.key for item in with_legs_best(fused, rankings, 4, 4)] == ["v1", "b1", "v2", "b2"]


def test_a_leg_that_runs_out_leaves_the_rest_to_the_other():
    rankings = {"vector": ["a"], "bm25": ["b", "c", "d"]}
    fused = reciprocal_rank_fusion(rankings)
    assert [item.key for item in with_legs_best(fused, rankings, 4, 4)] == ["a", "b", "c", "d"]
    assert [item.key for item in with_legs_best(fused, rankings, 10, 10)] == ["a", "b", "c", "d"]


def test_nothing_is_chosen_twice():
    rankings = {"vector": ["a", "b"], "bm25": ["a", "b"]}
    fused = reciprocal_rank_fusion(rankings)
    assert [item.key for item in with_legs_best(fused, rankings, 5, 3)] == ["a", "b"]


@pytest.mark.parametrize("fill", [-1, 4])
def test_a_fill_outside_0_to_k_is_refused(fill):
    with pytest.raises(ValueError, match="between 0 and k"):
        with_legs_best(reciprocal_rank_fusion(BURIED), BURIED, 3, fill)
