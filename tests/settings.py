"""Test settings: the real settings with a data folder and database of the tests' own."""

import os

_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if not _XDIST_WORKER:
    os.environ.setdefault("KB_DATA_DIR", "var/test")
else:
    # Under pytest-xdist (`make test`) each worker process gets a data folder of its own: its own embedded
    # database server, broker folder (so a test's Celery worker never takes another worker's tasks), media and
    # audit files. Workers inherit the controlling process's environment, so a worker overrides the folder
    # that process set, and only that one: a process a test starts with a folder of its own keeps it.
    if os.environ.get("KB_DATA_DIR", "var/test") == "var/test":
        os.environ["KB_DATA_DIR"] = f"var/test-{_XDIST_WORKER}"
    # The cores are shared out between the test processes, as between a worker's pool processes: torch threads
    # that outnumber the cores spin against each other.
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.setdefault("KB_TORCH_THREADS", _share)
    os.environ.setdefault("KB_WORKER_TORCH_THREADS", _share)
os.environ.setdefault("KB_WARM_EMBEDDINGS", "false")

from kb.settings import *  # noqa: E402, F403 - after the environment it reads is set

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Hashing passwords slowly is a feature in production and only a cost in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise looks there at start-up
# The app under uvicorn in tests serves static files from the source folders (no collectstatic needed).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
