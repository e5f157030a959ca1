"""What operators read at start-up: no warnings they can do nothing about (issue 17, hole 10). Each is checked in
a fresh interpreter, as the web and worker processes start, since pytest resets warning filters per test."""

from __future__ import annotations

import subprocess
import sys

from django.conf import settings

from tests.conftest import BASE_DIR


def _warnings_in_a_fresh_process(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin", "HOME": str(BASE_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_the_web_process_does_not_warn_for_each_static_file():
    stderr = _warnings_in_a_fresh_process(
        "import warnings, kb.asgi\n"
        "warnings.warn('StreamingHttpResponse must consume synchronous iterators in order to serve them "
        "asynchronously. Use an asynchronous iterator instead.', Warning)\n"
    )
    assert "StreamingHttpResponse" not in stderr


def test_the_worker_running_as_root_does_not_warn_about_pickle_it_does_not_accept():
    stderr = _warnings_in_a_fresh_process(
        "import warnings, django; django.setup()\n"
        "from celery.platforms import SecurityWarning\n"
        "from kb.celery import app\n"
        "assert set(app.conf.accept_content) == {'json'}, app.conf.accept_content\n"
        'warnings.warn("You\'re running the worker with superuser privileges: this is absolutely not recommended!",'
        " SecurityWarning)\n"
    )
    assert "superuser" not in stderr


def test_the_embedded_broker_url_names_a_host():
    from kombu import Connection

    if not settings.CELERY_BROKER_URL.startswith("filesystem"):
        return  # a real broker's URL is the operator's
    assert Connection(settings.CELERY_BROKER_URL).hostname == "localhost"
