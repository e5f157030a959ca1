"""ASGI entry point, served by uvicorn."""

import os

from kb.entry import fail_cleanly

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")


def _build():
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    from kb.search.embeddings import warm_up_in_background

    warm_up_in_background()
    return application


application = fail_cleanly(_build)
