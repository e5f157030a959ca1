"""The Celery app. Broker and result backend come from settings (CELERY_* names)."""

import logging
import os
import warnings

from celery import Celery
from celery.platforms import SecurityWarning
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

logger = logging.getLogger("kb.worker")

# Celery warns at every start when the worker runs as root (as `make run` does in a container or on a machine
# where everything runs as root). What it warns of is code execution through pickled messages; this app accepts
# JSON only (Celery's default `accept_content`, checked in tests/test_celery.py), so the warning says nothing an
# operator can act on. Run the worker as an ordinary user where you can.
warnings.filterwarnings(
    "ignore", message="You're running the worker with superuser privileges", category=SecurityWarning
)

app = Celery("kb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# The pool's size, known to the worker's main process before it forks the pool's processes.
_pool_processes = 1


@worker_init.connect
def _embedding_model_present(sender=None, **kwargs) -> None:
    """A worker without its embedding model could only fail every document: refuse to start, in one line."""
    from kb.entry import fail_cleanly
    from kb.search.embeddings import model_ensure_available

    fail_cleanly(model_ensure_available)  # SystemExit(2): Celery's signal dispatch passes it on
    global _pool_processes
    _pool_processes = getattr(sender, "concurrency", None) or 1  # --concurrency, or CELERY_WORKER_CONCURRENCY


def worker_torch_threads(pool_processes: int) -> int:
    """KB_WORKER_TORCH_THREADS, or the machine's cores shared out between the pool's processes."""
    from django.conf import settings

    return settings.KB_WORKER_TORCH_THREADS or max(1, (os.cpu_count() or 1) // pool_processes)


@worker_process_init.connect
def _own_process_group(**kwargs) -> None:
    """Leave the main process's process group. honcho (`make run`) stops a process by signalling its whole
    group: the pool processes then died of SIGTERM mid-shutdown (logged as ERROR), the pool forked new ones,
    and the worker was SIGKILLed. Now only the main process gets the signal and shuts its pool down itself;
    a pool process still dies with the main process (Celery sets PDEATHSIG SIGKILL in each one)."""
    os.setpgid(0, 0)


@worker_process_init.connect
def _warm_embedding_model(**kwargs) -> None:
    """Each pool process loads its own model (one per process) as it starts, not on its first document."""
    from kb.search import embeddings

    threads = worker_torch_threads(_pool_processes)
    embeddings.use_threads(threads)
    logger.info("pool process of %d: embedding with %d torch threads", _pool_processes, threads)
    embeddings.warm_up_in_background(always=True)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender=None, **kwargs) -> None:
    """Around each task, what Django does around a request: a connection past CONN_MAX_AGE, or broken, is closed
    (the next query opens a new one), the others are kept for the next task (settings.CELERY_DB_REUSE_MAX). Not
    for a task run eagerly, inside its caller's transaction (as Celery's own fix-up skips those)."""
    from django.db import close_old_connections

    if sender is None or getattr(sender.request, "is_eager", False):
        return
    close_old_connections()


@app.task(name="kb.ping")
def ping() -> str:
    """Round trip for /readyz drills and the worker test: proves a worker consumes the broker."""
    return "pong"
