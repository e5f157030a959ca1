"""Schemathesis against the app's own OpenAPI schema (/api/v1/openapi.json), in process (WSGI).

Every operation is called with generated inputs, valid (positive) and invalid (negative), by a user holding
every role, and every response is checked: no server error, a declared status code, content type and
headers, a body that matches the declared schema, invalid input refused with a 4xx, and authentication
enforced. Real PostgreSQL (the test's transaction), the offline extractive model only.

Schemathesis' own pytest integration (`schema.parametrize()`) reads `request.node._nodeid`, which pytest 9
no longer has; the operations are parametrized here instead and each runs its cases with `@given`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.mutations import OperatorKind
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kb.accounts.roles import Role
from kb.accounts.services import api_token_create
from tests.factories import UserFactory


def _import_schemathesis_now() -> None:
    """schemathesis imports most of itself lazily, inside the first test that loads a schema. pytest rewrites
    those modules (schemathesis registers a pytest plugin), and in Python 3.11.7 rewriting (ast.parse) can fail
    after an unrelated RecursionError earlier in the session ("AST constructor recursion depth mismatch",
    CPython gh-106905; seen once in a full run). Importing them at collection, before any test, avoids it."""
    for package in ("specs.openapi", "generation", "openapi", "transport"):
        package = f"schemathesis.{package}"
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)


_import_schemathesis_now()


SCHEMA_URL = "/api/v1/openapi.json"
# Per operation and mode: the whole file stays within about a minute on 2 cores. To dig deeper, run it with
# KB_FUZZ_EXAMPLES=500 and KB_FUZZ_RANDOM=1 (new cases each run instead of the same ones).
EXAMPLES = int(os.environ.get("KB_FUZZ_EXAMPLES", "40"))
DERANDOMIZE = not os.environ.get("KB_FUZZ_RANDOM")


def _invisible_on_the_wire(mutation) -> bool:
    """A form field's value made invalid only by its type: every multipart form field is text, so a text
    field generated as a number, a boolean or an object (sent as JSON) arrives as valid text, and a file
    part stays a file part. (Schemathesis allows for this in paths and query strings only.)"""
    return mutation.parameter_location == ParameterLocation.BODY and (
        mutation.operator == OperatorKind.CHANGE_TYPE
        or (
            mutation.operator == OperatorKind.NEGATE_CONSTRAINTS
            and set(mutation.keywords) <= {"type", "anyOf", "format"}
        )
    )


def _rejects_invalid_data(ctx, response, case) -> bool | None:
    """Schemathesis' negative_data_rejection, except for multipart requests made invalid in a way the
    server cannot see."""
    mutations = getattr(case.meta.phase.data, "mutations", None) or []
    if case.media_type == "multipart/form-data" and mutations and all(map(_invisible_on_the_wire, mutations)):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    _rejects_invalid_data,
    ignored_auth,
]


def _cases() -> list:
    """(method, path, mode) for every operation; negative only where there is input to make invalid."""
    from kb.api import api

    cases = []
    for path, methods in api.get_openapi_schema()["paths"].items():
        for method, operation in methods.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                cases.append(pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}"))
    return cases


QUESTIONS = [
    "What is the hotel limit per night in Amsterdam?",
    "How long must passwords be?",
    "How many weeks of parental leave do parents get?",
]


class _TestWSGIHandler(WSGIHandler):
    """Django's own WSGI handler, as in production, except that (as in Django's test client) requests do not
    close the database connection, which holds the test's transaction. Django's test client reconnects the
    signal after each of its requests, so it is taken off before each request."""

    def __call__(self, environ, start_response):
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        return super().__call__(environ, start_response)


@pytest.fixture
def api_schema(db, settings, corpus):
    settings.KB_MODELS = ["extractive"]  # the model layer stays offline
    settings.KB_RATE_LIMIT_PER_MINUTE = 0  # hundreds of questions a minute are the point here
    try:
        yield schemathesis.openapi.from_wsgi(SCHEMA_URL, _TestWSGIHandler())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def user(db):
    return UserFactory(roles=list(Role))


@pytest.fixture
def bearer(user) -> dict[str, str]:
    _, raw = api_token_create(user=user)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def known(corpus, user, bearer, client) -> dict[str, list]:
    """Values that exist (generated ids almost never do): a share of the cases is pointed at these."""
    asked = client.post("/api/v1/ask", {"question": QUESTIONS[0]}, content_type="application/json", headers=bearer)
    assert asked.status_code == 200, asked.content
    return {
        "document_id": [corpus.travel.pk, corpus.security.pk, corpus.leave.pk],
        "exchange_id": [asked.json()["exchange_id"]],
        "conversation_id": [asked.json()["conversation_id"]],
        "question": QUESTIONS,
    }


def _aim_at_known_values(case, known: dict[str, list]) -> None:
    """Replace a generated id (or question) by one that exists in about half of the cases, chosen by the
    generated value itself so that Hypothesis still controls (and shrinks) the choice. Values generated to
    be invalid are left alone."""

    def aimed(name: str, value):
        if name not in known or isinstance(value, bool) or not isinstance(value, int | str):
            return value
        number = value if isinstance(value, int) else len(value)
        return known[name][number // 2 % len(known[name])] if number % 2 == 0 else value

    if case.path_parameters and not case.meta.is_negative_at(ParameterLocation.PATH):
        for name, value in case.path_parameters.items():
            case.path_parameters[name] = aimed(name, value)
    if isinstance(case.body, dict) and not case.meta.is_negative_at(ParameterLocation.BODY):
        for name, value in case.body.items():
            case.body[name] = aimed(name, value)


def _sse_events_are_well_formed(ctx, response, case) -> bool | None:
    """A stream ends with `done`, whatever came before; each event's data is checked by the schema."""
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        names = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
        assert names and names[0] == "start" and names[-1] == "done", names
    return None


# Under WSGI, Django reads an async stream (ask with stream=true) whole before sending it, and says so;
# production serves it under ASGI, event by event (tests/answers/test_api.py).
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_operation_conforms_to_its_schema(api_schema, bearer, known, method, path, mode):
    operation = api_schema[path][method]
    statuses: list[int] = []

    @hypothesis_settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE
    )
    # The bearer token is given, not generated: it is valid in every case, negative ones included.
    @given(case=operation.as_strategy(generation_mode=mode, headers=bearer))
    def run(case):
        _aim_at_known_values(case, known)
        response = case.call_and_validate(checks=[*CHECKS, _sse_events_are_well_formed])
        statuses.append(response.status_code)

    run()
    if mode is GenerationMode.POSITIVE:
        # Not only refusals: the operation did its work for some of the generated requests.
        assert any(200 <= status < 300 for status in statuses), statuses


# --- what the fuzzing found, kept as plain examples -------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [{"title": "Parking\x00"}, {"access_groups": "HR\x00"}],
    ids=["NUL in the title", "NUL in an access group"],
)
def test_an_upload_with_a_nul_character_in_a_field_is_a_clear_422(client, bearer, form):
    # PostgreSQL text cannot hold NUL: this was a 500 (DataError) before the API refused it.
    from django.core.files.uploadedfile import SimpleUploadedFile

    body = {"files": [SimpleUploadedFile("parking.md", b"# Parking\n\nFree spaces.")], **form}
    response = client.post("/api/v1/documents", body, headers=bearer)
    assert response.status_code == 422, response.content
    assert "Null characters are not allowed" in str(response.json()["detail"])


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"comment": "fine\x00"}, 422),
        ({"rating": "sideways"}, 422),
        ({"rating": "down", "reason": "bored"}, 422),
        ({"rating": "down", "reason": "outdated"}, 200),
    ],
)
def test_feedback_values_are_validated_by_the_schema(client, bearer, known, change, status):
    body = {"exchange_id": known["exchange_id"][0], "rating": "up", **change}
    response = client.post("/api/v1/feedback", body, content_type="application/json", headers=bearer)
    assert response.status_code == status, response.content


def test_a_question_with_a_nul_character_is_cleaned_and_answered(client, bearer, known, settings):
    settings.KB_MODELS = ["extractive"]
    body = {"question": "What is the hotel limit\x00 per night in Amsterdam?"}
    response = client.post("/api/v1/ask", body, content_type="application/json", headers=bearer)
    assert response.status_code == 200, response.content


def test_an_unreadable_multipart_body_is_a_json_400(client, bearer):
    # Django answered this with its HTML "Bad Request" page, which the schema does not declare.
    boundary = "b0undary"
    header = b"X-Header: " + b"x" * 20_000  # longer than Django reads for one part's headers
    body = b"--b0undary\r\n" + header + b"\r\n\r\nbody\r\n--b0undary--\r\n"
    response = client.post(
        "/api/v1/documents", body, content_type=f"multipart/form-data; boundary={boundary}", headers=bearer
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert "could not be read" in response.json()["detail"]
