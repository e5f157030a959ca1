"""Celery tasks for the audit log: thin, each calls one service (scheduled by beat, CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from kb.audit import services
from kb.db import connected_as

logger = logging.getLogger(__name__)


@shared_task(name="audit.verify", ignore_result=True)
def chain_verify(triggered_by: str = "beat") -> bool:
    """Verify the chain; a broken chain is logged as an error and shown by /metrics (kb_audit_chain_ok 0)."""
    return services.chain_verify(triggered_by=triggered_by).ok


@shared_task(name="audit.purge", ignore_result=True)
def audit_purge() -> int:
    try:
        with connected_as(settings.KB_DATABASE_OWNER_URL):  # the application's role may not delete events
            result = services.audit_purge()
    except services.LegalHoldActive as hold:
        logger.info("audit purge skipped: %s", hold)
        return 0
    except services.ChainBroken as broken:
        logger.error("audit purge refused: %s", broken)
        return 0
    logger.info("audit purge: %s", result.message())
    return result.deleted


@shared_task(name="audit.checkpoint", ignore_result=True)
def checkpoint_sign(reason: str = "time") -> int | None:
    """Sign the log's head if it grew since the last checkpoint (beat's time cadence; every N events on commit)."""
    checkpoint = services.checkpoint_make(reason=reason)
    return checkpoint.last_seq if checkpoint is not None else None
