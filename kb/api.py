"""The JSON API, /api/v1/ (OpenAPI at /api/v1/openapi.json). Session or bearer-token auth."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI, Schema

from kb.accounts.api_auth import signed_in
from kb.accounts.roles import roles_of
from kb.api_common import ErrorOut

api = NinjaAPI(
    title="kb API",
    version="1",
    urls_namespace="api",
    auth=signed_in(),
    docs_url="/docs",
)


@api.exception_handler(MultiPartParserError)
@api.exception_handler(TooManyFieldsSent)
@api.exception_handler(TooManyFilesSent)
@api.exception_handler(RequestDataTooBig)
def unreadable_body(request, exc):
    """A body Django cannot read is the client's mistake: a 400 in JSON, as the schema says, not an HTML page."""
    return api.create_response(
        request,
        {"detail": f"The request body could not be read ({exc}); check its encoding and size, and send it again."},
        status=400,
    )


from ingest.api import router as documents_router  # noqa: E402 - the api object must exist first

api.add_router("/documents", documents_router)

from kb.answers.api import router as answers_router  # noqa: E402

api.add_router("", answers_router)

from kb.audit.api import router as audit_router  # noqa: E402

api.add_router("/audit", audit_router)


class Me(Schema):
    username: str
    roles: list[str]
    is_superuser: bool


@api.get("/me", response={200: Me, 401: ErrorOut}, summary="Who the credentials belong to, and their roles")
def me(request):
    user = request.auth
    return {
        "username": user.get_username(),
        "roles": [r.value for r in roles_of(user)],
        "is_superuser": user.is_superuser,
    }
