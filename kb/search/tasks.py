"""Celery tasks of the keyword index: thin, scheduled by beat (CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from kb.search import packing

logger = logging.getLogger(__name__)


@shared_task(name="search.postings_pack", ignore_result=True)
def postings_pack() -> int:
    """Move new postings into blocks (and a database's first full pack); returns the postings moved."""
    result = packing.postings_pack()
    if result.full or result.repacked_terms or result.moved:
        logger.info("postings pack: %s", result.message())
    return result.moved
