"""The audit export in the JSON API: GET /api/v1/audit/export (Compliance only)."""

from __future__ import annotations

from ninja import Query, Router, Schema
from ninja.errors import HttpError

from kb.accounts.api_auth import BearerToken, SessionRefused
from kb.accounts.roles import Role, has_role
from kb.api_common import responses
from kb.audit import services
from kb.audit.export import CONTENT_TYPES, export_response
from kb.audit.filters import filters_from

router = Router(tags=["audit"])


class ExportQuery(Schema):
    """Filters as text: they are validated together, with messages that say what to type."""

    format: str = "csv"
    since: str | None = None
    until: str | None = None
    user: str | None = None
    document: str | None = None
    model: str | None = None
    outcome: str | None = None
    feedback: str | None = None
    kind: str | None = None
    q: str | None = None


@router.get(
    "/export",
    summary="Stream the audit log as CSV or JSON Lines; the last line is the manifest. The export is audited. "
    "Bearer token only: in a browser, export from the audit page.",
    response=responses({200: None}),
    openapi_extra={
        "responses": {
            200: {"content": {kind.split(";")[0]: {"schema": {"type": "string"}} for kind in CONTENT_TYPES.values()}}
        }
    },
    # A token, never the session: the export writes an audit event, and a GET with the session cookie can be
    # started by a link on another site.
    auth=[
        BearerToken((Role.COMPLIANCE,), "Exporting the audit log needs the Compliance role."),
        SessionRefused(
            "The export API takes a bearer token (manage.py create_api_token), not the browser session: "
            "in a browser, use the export buttons on /audit/."
        ),
    ],
)
def export(request, params: Query[ExportQuery]):
    if not has_role(request.auth, Role.COMPLIANCE):
        raise HttpError(403, "Exporting the audit log needs the Compliance role.")
    values = params.dict(exclude_none=True)
    format = values.pop("format")
    filters, error = filters_from(values)
    if filters is None:
        raise HttpError(422, error)
    try:
        stream = services.audit_export_begin(
            filters=filters, format=format, actor=request.auth, via="api", trailer=True
        )
    except services.AuditError as refused:
        raise HttpError(422, str(refused)) from None
    return export_response(request, stream)
