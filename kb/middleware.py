"""A base for middleware that must not push async views and streams off the event loop."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


class AroundRequest:
    """Sync- and async-capable middleware: `before(request)` runs first and returns a state, `after(request,
    response, state)` runs last (response None when the inner layers raised), on the event loop for async
    views and in the request's thread for sync ones."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def before(self, request):
        return None

    def after(self, request, response, state) -> None:
        pass

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        state, response = self.before(request), None
        try:
            response = self.get_response(request)
            return response
        finally:
            self.after(request, response, state)

    async def _acall(self, request):
        state, response = self.before(request), None
        try:
            response = await self.get_response(request)
            return response
        finally:
            self.after(request, response, state)
