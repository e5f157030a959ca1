"""Every URL pattern and API route, for every role: anonymous, Employee, Knowledge admin, Compliance, superuser.

`ALLOWED` names, per route, the roles that may use it; everyone else gets the login page (anonymous browser),
401 (anonymous API) or 403 / 404 (signed in without the role, or someone else's object). A new route must be
added here: the first test fails until it is.
"""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from kb.accounts.services import api_token_create
from kb.answers import services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

ANONYMOUS, EMPLOYEE, ADMIN, COMPLIANCE, SUPERUSER = (
    "anonymous",
    "employee",
    "knowledge_admin",
    "compliance",
    "superuser",
)
EVERYONE = {ANONYMOUS, EMPLOYEE, ADMIN, COMPLIANCE, SUPERUSER}
SIGNED_IN = EVERYONE - {ANONYMOUS}
ASKERS = {EMPLOYEE, SUPERUSER}
ADMINS = {ADMIN, SUPERUSER}
AUDITORS = {COMPLIANCE, SUPERUSER}

# (method, path template, roles allowed). {document} {exchange} {conversation} {seq} are filled in below;
# the exchange and conversation belong to the employee, so for other askers they are "not found".
ROUTES = [
    ("GET", "/", SIGNED_IN),
    ("POST", "/ask", ASKERS),
    ("GET", "/c/{conversation}/", {EMPLOYEE}),
    ("GET", "/exchanges/{exchange}/", {EMPLOYEE}),
    ("GET", "/exchanges/{exchange}/sources/1", {EMPLOYEE}),
    ("POST", "/exchanges/{exchange}/feedback", {EMPLOYEE}),
    ("GET", "/read/{document}/", ASKERS),
    ("GET", "/login/", EVERYONE),
    ("POST", "/logout/", EVERYONE),
    ("GET", "/documents/", ADMINS),
    ("POST", "/documents/upload", ADMINS),
    ("POST", "/documents/reindex", ADMINS),
    ("POST", "/documents/demo/remove", ADMINS),
    ("GET", "/documents/{document}/", ADMINS),
    ("POST", "/documents/{document}/replace", ADMINS),
    ("POST", "/documents/{document}/reindex", ADMINS),
    ("POST", "/documents/{document}/access", ADMINS),
    ("POST", "/documents/{document}/delete", ADMINS),
    ("GET", "/audit/", AUDITORS),
    ("GET", "/audit/{seq}/", AUDITORS),
    ("GET", "/audit/analytics/", ADMINS | AUDITORS),
    ("POST", "/audit/export?format=csv", AUDITORS),
    ("POST", "/audit/verify", AUDITORS),
    ("POST", "/audit/legal-hold", AUDITORS),
    ("GET", "/search/?q=hotel", ADMINS),
    ("GET", "/api/v1/openapi.json", EVERYONE),
    ("GET", "/api/v1/docs", EVERYONE),
    ("GET", "/api/v1/me", SIGNED_IN),
    ("GET", "/api/v1/documents", ASKERS | ADMINS),
    ("POST", "/api/v1/documents", ADMINS),
    ("GET", "/api/v1/documents/{document}", ASKERS | ADMINS),
    ("POST", "/api/v1/documents/{document}/reindex", ADMINS),
    ("DELETE", "/api/v1/documents/{document}", ADMINS),
    ("POST", "/api/v1/ask", ASKERS),
    ("POST", "/api/v1/feedback", {EMPLOYEE}),
    ("GET", "/api/v1/audit/export?format=jsonl", AUDITORS),
    ("GET", "/healthz", EVERYONE),
    ("GET", "/readyz", EVERYONE),
    ("GET", "/metrics", EVERYONE),
    ("GET", "/ops/", ADMINS),
    ("POST", "/ops/configurations", ADMINS),
    ("POST", "/ops/rollouts", ADMINS),
    ("POST", "/ops/rollouts/1", ADMINS),
    ("GET", "/topics/", ADMINS),
    ("POST", "/topics/defaults", ADMINS),
    ("GET", "/topics/1/", ADMINS),
    ("POST", "/topics/1/delete", ADMINS),
]
# Routes whose allowed roles may still get a 404 (another asker's object, routes that need an argument).
NOT_FOUND_FOR_OTHERS = {"/c/{conversation}/", "/exchanges/{exchange}/", "/exchanges/{exchange}/sources/1",
                        "/exchanges/{exchange}/feedback"}  # fmt: skip


def _patterns(resolvers, prefix: str = "") -> set[str]:
    found = set()
    for entry in resolvers:
        if isinstance(entry, URLResolver):
            found |= _patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            found.add(prefix + str(entry.pattern))
    return found


def _normalise(template: str) -> str:
    import re

    path = template.split("?")[0].lstrip("/")
    return re.sub(r"\{\w+\}|(?<=/)\d+(?=/|$)", "<arg>", path)


def test_every_route_is_in_the_matrix():
    import re

    routes = {re.sub(r"<[^>]+>", "<arg>", pattern) for pattern in _patterns(get_resolver().url_patterns)}
    routes.discard("api/v1/")  # ninja's root, not a page
    covered = {_normalise(template) for _, template, _ in ROUTES}
    assert routes <= covered, f"routes missing from the authorization matrix: {sorted(routes - covered)}"


@pytest.fixture
def world(corpus, settings):
    settings.KB_MODELS = ["extractive"]
    users = {
        EMPLOYEE: UserFactory(roles=["Employee"]),
        ADMIN: UserFactory(roles=["Knowledge admin"]),
        COMPLIANCE: UserFactory(roles=["Compliance"]),
        SUPERUSER: UserFactory(is_superuser=True, is_staff=True),
    }
    result = services.ask("What is the hotel limit per night in Amsterdam?", users[EMPLOYEE])
    from kb.audit.models import AuditEvent

    values = {
        "document": corpus.travel.pk,
        "exchange": result["exchange_id"],
        "conversation": result["conversation_id"],
        "seq": AuditEvent.objects.order_by("seq").values_list("seq", flat=True).first(),
    }
    return users, values


@pytest.mark.parametrize(("method", "template", "allowed"), ROUTES, ids=[f"{m} {t}" for m, t, _ in ROUTES])
def test_each_role_gets_what_it_may_and_nothing_else(client, world, method, template, allowed):
    users, values = world
    path = template.format(**values)
    api = path.startswith("/api/")
    for role in [ANONYMOUS, EMPLOYEE, ADMIN, COMPLIANCE, SUPERUSER]:
        client.logout()
        headers = {}
        if role != ANONYMOUS:
            if api:
                headers["Authorization"] = f"Bearer {api_token_create(user=users[role])[1]}"
            else:
                client.force_login(users[role])
        # Empty bodies: the role is checked before the body is read, so a wrong role is a 403 either way.
        if api and method in ("POST", "DELETE"):
            body = {"exchange_id": values["exchange"], "rating": "up"} if template == "/api/v1/feedback" else {}
            response = client.generic(
                method, path, data=json.dumps(body), content_type="application/json", headers=headers
            )
        else:
            response = getattr(client, method.lower())(path, headers=headers)
        status = response.status_code
        label = f"{role} {method} {path} -> {status}"
        assert status < 500, label
        if role in allowed:
            assert status != 422 or method != "GET", label
            assert status not in (401, 403), label
            if template != "/logout/" and (role == ANONYMOUS or template not in NOT_FOUND_FOR_OTHERS):
                assert not (status == 302 and "/login/" in response.get("Location", "")), label
        elif role == ANONYMOUS:
            assert status in (401, 302), label
            if status == 302:
                assert "/login/" in response["Location"], label
        elif template in NOT_FOUND_FOR_OTHERS and role in ASKERS:
            assert status == 404, label  # someone else's conversation or answer: not found, not forbidden
        else:
            assert status in (403, 404), label
