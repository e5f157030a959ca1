"""The JSON API, /api/v1/ (OpenAPI at /api/v1/openapi.json). Session or bearer-token auth."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI, Schema
from ninja.errors import ValidationError

from ingest.services import too_large_message
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


@api.exception_handler(ValidationError)
def invalid_or_too_large(request, exc):
    """The schema's 422, except when the upload handler dropped every file for its size (ingest/uploads.py):
    the form then arrives without `files`, and the caller needs to hear about the limit, not the field."""
    refused = getattr(request, "kb_oversized_files", None)
    if refused:
        return api.create_response(request, {"detail": " ".join(map(too_large_message, refused))}, status=413)
    return api.create_response(request, {"detail": exc.errors}, status=422)


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
