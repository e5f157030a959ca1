"""What a request gets while the database is unreachable: a clear 503, not a generic 500.

Django calls `server_error` (handler500) inside the exception's handling, so the exception is at hand: a lost
or refused database connection (PostgreSQL restarting, a failover, the pool waiting in vain) becomes 503
with Retry-After and a sentence saying what happened and what to do - JSON for the API, a page otherwise.
Anything else stays a 500. The connection pool replaces broken connections by itself, so the same process
answers again as soon as the database is back.
"""

from __future__ import annotations

import logging
import sys

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template import loader
from django.views import defaults
from psycopg_pool import PoolTimeout

logger = logging.getLogger(__name__)

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    PoolTimeout,
)
RETRY_AFTER_S = 10
MESSAGE = (
    "The database is not reachable just now (it may be restarting), so this request was not carried out and "
    "nothing was changed. Try again in a minute; if it lasts, tell your administrator."
)


def is_database_unavailable(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, DATABASE_ERRORS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def database_unavailable_response(request) -> HttpResponse:
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse({"detail": MESSAGE}, status=503)
    else:
        html = loader.get_template("503.html").render({"message": MESSAGE})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


def server_error(request, template_name: str = defaults.ERROR_500_TEMPLATE_NAME) -> HttpResponse:
    exc = sys.exc_info()[1]
    if is_database_unavailable(exc):
        return database_unavailable_response(request)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Something went wrong on our side; it has been logged. Try again."}, status=500)
    return defaults.server_error(request, template_name)
