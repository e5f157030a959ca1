"""Who is acting: the signed-in user of the request being served, for events whose service is not told.

Document services (upload, delete, reindex, readers) are called by views and the API with the request's
user; events they record name that user. Outside a request (worker, beat, commands) the actor is the
system. The user is read when an event is recorded, after authentication (the API's bearer token sets it
in the view).
"""

from __future__ import annotations

from contextvars import ContextVar

from kb.middleware import AroundRequest

_request: ContextVar = ContextVar("kb_audit_request", default=None)


def request_actor():
    """The authenticated user of the current request, or None."""
    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    return user if user is not None and user.is_authenticated else None


class AuditActorMiddleware(AroundRequest):
    def before(self, request):
        return _request.set(request)

    def after(self, request, response, token) -> None:
        _request.reset(token)
