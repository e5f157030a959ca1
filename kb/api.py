"""The JSON API, /api/v1/ (OpenAPI at /api/v1/openapi.json). Session or bearer-token auth."""

from __future__ import annotations

from ninja import NinjaAPI, Schema

from kb.accounts.api_auth import signed_in
from kb.accounts.roles import roles_of

api = NinjaAPI(
    title="kb API",
    version="1",
    urls_namespace="api",
    auth=signed_in(),
    docs_url="/docs",
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


@api.get("/me", response=Me, summary="Who the credentials belong to, and their roles")
def me(request):
    user = request.auth
    return {
        "username": user.get_username(),
        "roles": [r.value for r in roles_of(user)],
        "is_superuser": user.is_superuser,
    }
