"""Authentication for the JSON API: a bearer token or the browser session, optionally requiring a role.

With a role required, a signed-in caller without it gets 403 before the request body is read, so that a
wrong-role request learns nothing from validation errors either.
"""

from __future__ import annotations

from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer

from kb.accounts.roles import Role, has_role
from kb.accounts.services import api_token_authenticate


def _require(user, roles: tuple[Role, ...], message: str = ""):
    if roles and not any(has_role(user, role) for role in roles):
        raise HttpError(403, message or f"This needs the {' or '.join(role.label for role in roles)} role.")
    return user


class BearerToken(HttpBearer):
    def __init__(self, roles: tuple[Role, ...] = (), message: str = "") -> None:
        super().__init__()
        self.roles = roles
        self.message = message

    def authenticate(self, request, token):
        user = api_token_authenticate(token)
        if user is None:
            return None
        request.user = user
        return _require(user, self.roles, self.message)


class SessionAuth(APIKeyCookie):
    """The browser's session; unsafe methods also need the CSRF token, as in any Django form."""

    param_name = "sessionid"

    def __init__(self, roles: tuple[Role, ...] = (), csrf: bool = True, message: str = "") -> None:
        super().__init__(csrf=csrf)
        self.roles = roles
        self.message = message

    def authenticate(self, request, key):
        user = getattr(request, "user", None)
        if user is None or not (user.is_authenticated and user.is_active):
            return None
        return _require(user, self.roles, self.message)


class SessionRefused(APIKeyCookie):
    """For a GET that writes (an audit export is recorded): the session cookie travels with a link followed
    from another site (SameSite=Lax), so such a route takes a bearer token only, and a signed-in browser is
    told, with `message`, where to go instead."""

    param_name = "sessionid"

    def __init__(self, message: str) -> None:
        super().__init__(csrf=False)
        self.message = message

    def authenticate(self, request, key):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            raise HttpError(401, self.message)
        return None


def signed_in() -> list:
    return [BearerToken(), SessionAuth(csrf=True)]


def for_roles(*roles: Role, message: str = "") -> list:
    """Signed in with one of `roles` (superusers hold every role); `message` says why when not."""
    return [BearerToken(roles, message), SessionAuth(roles, csrf=True, message=message)]
