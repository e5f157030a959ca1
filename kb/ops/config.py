"""Which answer configuration answers a question (stage 1, scope): the current one, or a rollout's candidate for
the askers whose bucket falls under its share.

The state lives in the database (kb/ops/models.py). Each question reads the deployment's stamp (one indexed
row); the configurations and the open rollout are read again only when the stamp has changed, so a promotion or
rollback made in any process is seen by the next question of every process, with no restart.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings

from kb.ops.models import AnswerConfiguration, Deployment, Rollout, RolloutState

ENVIRONMENT = "environment"
CANDIDATE, BASELINE = "candidate", "baseline"


@dataclass(frozen=True)
class Configuration:
    """What answers: a prompt version, a model chain and routes. `id` None: the environment's, never stored."""

    id: int | None
    name: str
    prompt_version: str
    models: tuple[str, ...]
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rollout_id: int | None = None  # set when chosen by an open rollout
    arm: str = ""  # candidate or baseline, within that rollout

    @classmethod
    def of(cls, row: AnswerConfiguration) -> Configuration:
        routes = {tier: tuple(chain) for tier, chain in (row.routes or {}).items()}
        return cls(row.pk, row.name, row.prompt_version, tuple(row.chain), routes)

    def as_record(self) -> dict:
        return {"id": self.id, "name": self.name, "rollout_id": self.rollout_id, "arm": self.arm}


def environment() -> Configuration:
    """The configuration the environment gives (KB_PROMPT_VERSION, KB_MODELS, KB_ROUTES), read afresh."""
    routes = {tier: tuple(chain) for tier, chain in settings.KB_ROUTES.items()}
    return Configuration(None, ENVIRONMENT, settings.KB_PROMPT_VERSION, tuple(settings.KB_MODELS), routes)


@dataclass(frozen=True)
class Snapshot:
    """The rollout state as of one stamp."""

    stamp: str | None
    current: Configuration | None  # None: the environment's configuration
    rollout_id: int | None = None
    candidate: Configuration | None = None
    share: int = 0


_lock = threading.Lock()
_snapshot = Snapshot(stamp=None, current=None)


def _load(stamp: str | None) -> Snapshot:
    deployment = Deployment.objects.filter(pk=1).select_related("current").first()
    if deployment is None:
        return Snapshot(stamp=None, current=None)
    current = Configuration.of(deployment.current) if deployment.current else None
    rollout = Rollout.objects.filter(state=RolloutState.ROLLING).select_related("candidate").first()
    if rollout is None or current is None:
        return Snapshot(stamp=deployment.stamp, current=current)
    return Snapshot(deployment.stamp, current, rollout.pk, Configuration.of(rollout.candidate), rollout.share)


def snapshot() -> Snapshot:
    """The state, reloaded when the stamp in the database is not the one this process holds."""
    global _snapshot
    stamp = Deployment.objects.filter(pk=1).values_list("stamp", flat=True).first()
    held = _snapshot
    if stamp == held.stamp:
        return held
    fresh = _load(stamp)
    with _lock:
        _snapshot = fresh
    return fresh


def forget() -> None:
    """Drop this process's copy (tests roll the database back under it)."""
    global _snapshot
    with _lock:
        _snapshot = Snapshot(stamp=None, current=None)


def bucket(user_id: int, rollout_id: int) -> int:
    """0-99, fixed per asker and rollout: raising the share keeps everyone who had the candidate on it, and an
    asker does not flip between configurations within a conversation."""
    digest = hashlib.sha256(f"{rollout_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def configuration_for(user) -> Configuration:
    state = snapshot()
    if state.current is None:
        return environment()
    if state.candidate is None or state.rollout_id is None:
        return state.current
    if user is not None and user.pk is not None and bucket(user.pk, state.rollout_id) < state.share:
        arm, chosen = CANDIDATE, state.candidate
    else:
        arm, chosen = BASELINE, state.current
    return Configuration(chosen.id, chosen.name, chosen.prompt_version, chosen.models, chosen.routes,
                         rollout_id=state.rollout_id, arm=arm)  # fmt: skip
