"""What a request gets while the database is unreachable: a clear 503, not a generic 500.

Django calls `server_error` (handler500) inside the exception's handling, so the exception is at hand: a lost
or refused database connection (PostgreSQL restarting, a failover, the pool waiting in vain) becomes 503
with Retry-After and a sentence saying what happened and what to do - JSON for the API, a page otherwise.
Anything else stays a 500. The connection pool replaces broken connections by itself, so the same process
answers again as soon as the database is back.
"""

from __future__ import annotations

import errno
import logging
import sys

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template import loader
from django.views import defaults
from psycopg_pool import PoolTimeout

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 10
MESSAGE = (
    "The database is not reachable just now (it may be restarting), so this request was not carried out. "
    "Try again in a minute; if it lasts, tell your administrator."
)
# The pool gave up waiting: every connection busy (overload), or none can be made (the database is down; the
# pool's timeout then comes before any connection error reaches the request).
BUSY_MESSAGE = (
    "kb could not get a database connection in time (the database may be restarting, or kb is overloaded), so "
    "this request was not carried out. Try again in a minute; if it lasts, tell your administrator."
)

# SQLSTATEs of a lost or refused connection: class 08 (connection exception) and the server shutting down or
# restarting (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now). A statement timeout,
# a deadlock or a full disk are OperationalErrors too, but not an outage: they stay 500s (and are logged).
_OUTAGE_STATES = ("57P01", "57P02", "57P03")


def _is_lost_connection(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        # No SQLSTATE at all: the connection could not be made or broke (psycopg raises OperationalError or
        # InterfaceError without one).
        return (
            state.startswith("08")
            or state in _OUTAGE_STATES
            or (not state and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError))
        )
    return False


def _causes(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__


def unavailability(exc: BaseException | None) -> str | None:
    """MESSAGE for a lost database, BUSY_MESSAGE when the pool gave no connection in time, or None."""
    for link in _causes(exc):
        if isinstance(link, PoolTimeout):
            return BUSY_MESSAGE
        if _is_lost_connection(link):
            return MESSAGE
        if isinstance(link, InterfaceError | OperationalError) and "connection already closed" in str(link):
            return MESSAGE  # Django's wrapper of a connection psycopg had already seen break
    return None


def is_database_unavailable(exc: BaseException | None) -> bool:
    return unavailability(exc) is not None


def database_unavailable_response(request, message: str = MESSAGE) -> HttpResponse:
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse({"detail": message}, status=503)
    else:
        html = loader.get_template("503.html").render({"message": message})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


DISK_FULL_MESSAGE = (
    "The server's disk is full, so the upload was not stored and nothing was changed. Try again later and tell "
    "your administrator."
)


def _disk_full(exc: BaseException | None) -> bool:
    return any(isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT) for link in _causes(exc))


def server_error(request, template_name: str = defaults.ERROR_500_TEMPLATE_NAME) -> HttpResponse:
    exc = sys.exc_info()[1]
    message = unavailability(exc)
    if message is not None:
        return database_unavailable_response(request, message)
    if _disk_full(exc):  # while a large upload was being read into a temporary file
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": DISK_FULL_MESSAGE}, status=507)
        return HttpResponse(loader.get_template("503.html").render({"message": DISK_FULL_MESSAGE}), status=507)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Something went wrong on our side; it has been logged. Try again."}, status=500)
    return defaults.server_error(request, template_name)
