"""ASGI entry point, served by uvicorn."""

import os

from kb.entry import fail_cleanly

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")


def _build():
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    from django.conf import settings

    from kb.search.embeddings import model_ensure_available, use_threads, warm_up_in_background

    model_ensure_available()
    use_threads(settings.KB_WEB_TORCH_THREADS)
    warm_up_in_background()
    return application


application = fail_cleanly(_build)
