"""ASGI entry point, served by uvicorn."""

import os
import warnings

from kb.entry import fail_cleanly

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")

# WhiteNoise serves static files with a synchronous file iterator, which Django under ASGI reads whole before
# sending, with a warning per file. Our static files are a few KB (stylesheet, scripts, icon), so reading them
# whole costs nothing; the app's own streams (answers, audit exports) are asynchronous iterators.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value, here kept fixed


def _malloc_fixed_thresholds() -> None:
    """Keep glibc malloc's mmap and trim thresholds at 128 KiB instead of letting them adapt.

    By default glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed, after
    which the ask path's large short-lived buffers (retrieval's arrays, response bodies) are carved out of the
    heaps of the many per-request threads and, once freed, stay resident: under the load bench the web RSS
    then rose ~16 MB per 1000 asks with no Python objects growing (tracemalloc and gc counts flat; malloc_trim
    or jemalloc brought it back flat). Fixed thresholds return such blocks to the system when freed, as the
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ environment variables would; an operator who sets those
    (or preloads another allocator) keeps their choice."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or any(
        name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
    ):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    mallopt(m_trim_threshold, MMAP_THRESHOLD)


def _build():
    _malloc_fixed_thresholds()
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    from django.conf import settings

    from kb.search.embeddings import model_ensure_available, use_threads, warm_up_in_background

    model_ensure_available()
    use_threads(settings.KB_WEB_TORCH_THREADS)
    warm_up_in_background()
    return application


try:
    application = fail_cleanly(_build)
except SystemExit:
    # uvicorn's start-up failure code: with --workers its supervisor then stops instead of restarting the
    # process every half second with the same configuration error.
    raise SystemExit(3) from None
