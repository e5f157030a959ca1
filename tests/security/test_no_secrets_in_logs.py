"""No secret - API key, bearer token, password, SECRET_KEY - in any log line or stored record of a run.

One run of the production server (uvicorn) at LOG_LEVEL=DEBUG, through the paths that touch secrets: sign-in
with a wrong and a right password, API calls with a valid and a forged bearer token, questions (JSON and
streamed) with a pasted key and password, a model that answers, one that is overloaded and one that refuses
the API key, an upload. Then the server's whole output, every audit event and every stored exchange are
scanned for each secret.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from django.core import serializers

from kb.accounts.services import api_token_create
from kb.answers.models import Exchange
from kb.audit.models import AuditEvent
from tests.conftest import FALLBACK, PRIMARY
from tests.factories import PASSWORD, UserFactory
from tests.fake_anthropic import FakeAnthropic, Reply, quoting_responder

API_KEY = "sk-ant-api03-LOGSCANsentinelKEY0123456789abcdefXYZ"
SECRET_KEY = "logscan-secret-key-sentinel-0123456789-abcdefghijklmnop"
FORGED_TOKEN = "kb_forgedTOKENsentinel0123456789abcdef"
PASTED_KEY = "sk-ant-api03-PASTEDsentinel9876543210zyxwvu"
PASTED_PASSWORD = "Pasted-Pw-Sentinel-42"
WRONG_PASSWORD = "wrong-password-sentinel-17"


@pytest.mark.django_db(transaction=True)
def test_a_run_through_every_secret_bearing_path_logs_and_stores_none(asgi_server, corpus):
    admin = UserFactory(roles=["Employee", "Knowledge admin", "Compliance"])
    _, token = api_token_create(user=admin, name="log scan")
    with FakeAnthropic(default=quoting_responder) as fake:
        fake.then(Reply(status=529), Reply(status=401))  # overloaded, then a refused API key (a config error)
        server = asgi_server(
            ANTHROPIC_API_KEY=API_KEY,
            ANTHROPIC_BASE_URL=fake.url,
            SECRET_KEY=SECRET_KEY,
            KB_MODELS=f"{PRIMARY},{FALLBACK},extractive",
            KB_LLM_RETRIES="0",
            KB_HTTPS="false",  # the client below speaks plain HTTP and would not send Secure cookies back
            LOG_LEVEL="DEBUG",
        )
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for password, expected in ((WRONG_PASSWORD, 200), (PASSWORD, 302)):
                client.get("/login/")
                signed_in = client.post(
                    "/login/",
                    data={
                        "username": admin.username,
                        "password": password,
                        "csrfmiddlewaretoken": client.cookies["csrftoken"],
                    },
                )
                assert signed_in.status_code == expected
            forged = httpx.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {FORGED_TOKEN}"})
            assert forged.status_code == 401
            client.cookies.clear()  # from here on the bearer token is the only credential
            assert client.get("/api/v1/me", headers=auth).status_code == 200
            for question in (
                "What is the hotel limit per night in Amsterdam?",
                f"My key {PASTED_KEY} fails, how do I book a hotel in Rotterdam?",
                f"Is password: {PASTED_PASSWORD} long enough for the password rules?",
            ):
                response = client.post("/api/v1/ask", json={"question": question}, headers=auth)
                assert response.status_code == 200, response.text
            with client.stream(
                "POST", "/api/v1/ask", json={"question": "Do trains need approval?", "stream": True}, headers=auth
            ) as streamed:
                assert streamed.status_code == 200
                assert "event: done" in streamed.read().decode()
            upload = client.post(
                "/api/v1/documents",
                files={"files": ("keys.md", b"# Keys\n\nRotate keys every year.\n", "text/markdown")},
                headers=auth,
            )
            assert upload.status_code < 300, upload.text
            assert client.get("/readyz").status_code in (200, 503)
            assert client.get("/metrics").status_code in (200, 401, 403, 404)
        sent = [r.headers.get("x-api-key", "") + r.headers.get("authorization", "") for r in fake.requests]
        assert any(API_KEY in credentials for credentials in sent), "the key must really be in use"
    server.stop()

    log = server.output()
    assert "DEBUG" in log and "/api/v1/ask" in log, "the scan must see a real, verbose log"
    records = serializers.serialize("json", [*AuditEvent.objects.all(), *Exchange.objects.all()])
    assert AuditEvent.objects.exists() and Exchange.objects.count() >= 4
    for secret in (API_KEY, SECRET_KEY, token, FORGED_TOKEN, PASSWORD, WRONG_PASSWORD, PASTED_KEY, PASTED_PASSWORD):
        for where, text in (("the server log", log), ("the audit events and exchanges", records)):
            assert secret not in text, f"{secret[:12]}... found in {where}"
            # Nor a recognisable part of it (a key printed truncated still leaks most of it).
            assert secret[8:28] not in text, f"part of {secret[:12]}... found in {where}"
    assert not re.search(r"(x-api-key|authorization)['\"]?\s*[:=]", log, re.IGNORECASE)
    assert json.loads(records)  # the serialised records are what an export would carry
