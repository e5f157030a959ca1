"""Who is acting: the signed-in user of the request being served, for events whose service is not told.

Document services (upload, delete, reindex, readers) are called by views and the API with the request's
user; events they record name that user. Outside a request (worker, beat, commands) the actor is the
system. The user is read when an event is recorded, after authentication (the API's bearer token sets it
in the view).
"""

from __future__ import annotations

from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

_request: ContextVar = ContextVar("kb_audit_request", default=None)


def request_actor():
    """The authenticated user of the current request, or None."""
    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None and user.is_authenticated else None


class AuditActorMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)

    async def _acall(self, request):
        token = _request.set(request)
        try:
            return await self.get_response(request)
        finally:
            _request.reset(token)
