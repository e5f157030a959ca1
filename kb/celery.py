"""The Celery app. Broker and result backend come from settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

app = Celery("kb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="kb.ping")
def ping() -> str:
    """Round trip for /readyz drills and the worker test: proves a worker consumes the broker."""
    return "pong"
