"""The Celery app. Broker and result backend come from settings (CELERY_* names)."""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

app = Celery("kb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _embedding_model_present(**kwargs) -> None:
    """A worker without its embedding model could only fail every document: refuse to start, in one line."""
    from kb.entry import fail_cleanly
    from kb.search.embeddings import model_ensure_available

    fail_cleanly(model_ensure_available)  # SystemExit(2): Celery's signal dispatch passes it on


@app.task(name="kb.ping")
def ping() -> str:
    """Round trip for /readyz drills and the worker test: proves a worker consumes the broker."""
    return "pong"
