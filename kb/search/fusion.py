"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): pure, no database.

RRF uses only ranks, so it needs no calibration between a cosine distance and a BM25 score, whose scales
have nothing in common and change with the corpus.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Fused(Generic[Key]):
    key: Key
    score: float
    # 1-based rank of the item in each leg that returned it; a leg that did not return it is absent.
    ranks: dict[str, int] = field(default_factory=dict)


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[Key]],
    *,
    k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[Fused[Key]]:
    """Fuse best-first rankings: score(d) = sum over legs of weight / (k + rank of d in that leg).

    An item repeated within one leg counts at its best rank only. Ties are broken by the best rank the
    item reached in any leg, then by the order of the legs given, so the result is deterministic.
    """
    if k < 0:
        raise ValueError("the RRF constant k must not be negative")
    weights = weights or {}
    scores: dict[Key, float] = {}
    ranks: dict[Key, dict[str, int]] = {}
    first_seen: dict[Key, tuple[int, int]] = {}
    for leg_index, (leg, ranking) in enumerate(rankings.items()):
        weight = weights.get(leg, 1.0)
        for position, key in enumerate(ranking, 1):
            item_ranks = ranks.setdefault(key, {})
            if leg in item_ranks:
                continue
            item_ranks[leg] = position
            scores[key] = scores.get(key, 0.0) + weight / (k + position)
            seen = (position, leg_index)
            if key not in first_seen or seen < first_seen[key]:
                first_seen[key] = seen
    order = sorted(scores, key=lambda key: (-scores[key], first_seen[key]))
    if limit is not None:
        order = order[:limit]
    return [Fused(key=key, score=scores[key], ranks=ranks[key]) for key in order]


def with_legs_best(
    fused: Sequence[Fused[Key]], rankings: Mapping[str, Sequence[Key]], k: int, fill: int
) -> list[Fused[Key]]:
    """The first k - `fill` of `fused` (the fusion of `rankings`, best first, nothing cut), then `fill` more taken in
    turn from each leg of `rankings`: that leg's best item not already chosen.

    RRF buries an item that one leg ranks first and the other does not return (1/61 against 2/90 for rank 30
    in both, at k = 60), and that is often the passage nearest in meaning to a colloquial question. With fill
    = 0 this is `fused[:k]`.
    """
    if fill < 0 or fill > k:
        raise ValueError("fill must be between 0 and k")
    by_key = {item.key: item for item in fused}
    chosen = list(fused[: k - fill])
    keys = {item.key for item in chosen}
    queues = [iter(ranking) for ranking in rankings.values()]
    while len(chosen) < k and queues:
        for queue in list(queues):
            key = next((key for key in queue if key not in keys), None)
            if key is None:
                queues.remove(queue)
            elif len(chosen) < k:
                chosen.append(by_key[key])
                keys.add(key)
    return chosen
