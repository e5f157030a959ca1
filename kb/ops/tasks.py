"""Celery tasks of kb/ops: thin, they take ids and call one service."""

from __future__ import annotations

from celery import shared_task

from kb.ops import services, shadow


@shared_task(name="ops.rollout_evaluate", ignore_result=True)
def rollout_evaluate(rollout_id: int) -> None:
    shadow.rollout_evaluate(rollout_id=rollout_id)


@shared_task(name="ops.rollouts_check", ignore_result=True)
def rollouts_check() -> int:
    return services.rollouts_check()
