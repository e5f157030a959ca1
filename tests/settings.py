"""Test settings: the real settings with a data folder and database of the tests' own."""

import os

os.environ.setdefault("KB_DATA_DIR", "var/test")
os.environ.setdefault("KB_WARM_EMBEDDINGS", "false")

from kb.settings import *  # noqa: F403

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
