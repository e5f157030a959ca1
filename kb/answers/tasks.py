"""Celery tasks of the answer pipeline: thin, they call one service."""

from __future__ import annotations

from celery import shared_task

from kb.answers import services


@shared_task(name="answers.close_abandoned", ignore_result=True)
def close_abandoned() -> int:
    return services.exchanges_close_abandoned()
