"""Celery tasks: thin, take ids, call one service."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError

from ingest import services

logger = logging.getLogger(__name__)


_PROCESSING = {
    "acks_late": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 5,
    "soft_time_limit": settings.KB_INGEST_SOFT_TIME_LIMIT_S,
    "time_limit": settings.KB_INGEST_SOFT_TIME_LIMIT_S + 60,
}


@shared_task(name="ingest.process_document", **_PROCESSING)
def process_document(document_id: int) -> None:
    _process_reporting_failure(document_id)


@shared_task(name="ingest.process_documents", **_PROCESSING)
def process_documents(document_ids: list[int]) -> None:
    """Small documents uploaded together (services.processing_sent_together), each as process_document does: the
    first takes the others into its batch (so a lost message leaves them all under one lease), and a database
    read then says each of them is taken. Re-run after a transient error, it skips what is done."""
    for position, document_id in enumerate(document_ids):
        if not _process_reporting_failure(document_id, mates=document_ids, blamed=position == 0):
            for rest in document_ids[position + 1 :]:  # out of time: the others each in a message of their own
                services.enqueue_processing(rest)
            return


def _process_reporting_failure(document_id: int, *, mates: list[int] | None = None, blamed: bool = True) -> bool:
    """Process `document_id` (with its batch) and say on it what went wrong; False when the time limit stopped it.
    Out of time, a document that is not `blamed` (one of a message's later documents: the limit counts the whole
    message) goes back to the queue instead of failing."""
    try:
        services.document_process(document_id, batch=settings.KB_INGEST_BATCH_DOCUMENTS, mates=mates or ())
    except (OperationalError, InterfaceError):
        raise  # transient: Celery retries with backoff
    except SoftTimeLimitExceeded:
        if not blamed:
            services.documents_requeue([document_id])
            return False
        minutes = settings.KB_INGEST_SOFT_TIME_LIMIT_S // 60
        services.document_fail(
            document_id,
            code="timeout",
            message=f"Processing took longer than {minutes} minutes and was stopped; split the file into smaller ones.",
        )
        return False
    except Exception:
        # Anything else is a bug or a file we do not handle: say so on the document instead of leaving it
        # in progress to be retried until the resumer gives up with the wrong reason.
        logger.exception("processing document %s failed", document_id)
        services.document_fail(document_id, code="internal_error", message=services.INTERNAL_ERROR_MESSAGE)
    return True


@shared_task(name="ingest.resume_stalled", ignore_result=True)
def resume_stalled() -> int:
    return len(services.documents_resume_stalled())


@shared_task(name="ingest.reindex_stale_embeddings", ignore_result=True)
def reindex_stale_embeddings() -> int:
    return services.documents_reindex_stale_embeddings()
