"""Security defaults: Content-Security-Policy on every page, Secure cookies and HSTS outside DEBUG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def _policy(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/", "/documents/", "/audit/", "/api/v1/docs"])
def test_every_page_carries_a_strict_content_security_policy(client, superuser, path):
    if path != "/login/":
        client.force_login(superuser)
    response = client.get(path)
    assert response.status_code == 200, path
    policy = _policy(response)
    assert policy["default-src"] == ["'self'"]
    # No inline script or style, no eval, anywhere: the second wall behind escaping and sanitizing.
    for directive in ("script-src", "style-src"):
        assert policy[directive] == ["'self'"], directive
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_the_pages_hold_no_inline_script_or_style(client, superuser):
    """What the policy refuses must not be in our own templates either (it would break in the browser)."""
    pages = {"/login/": client.get("/login/").content.decode()}
    client.force_login(superuser)
    for path in ("/", "/documents/", "/search/", "/audit/", "/audit/analytics/"):
        pages[path] = client.get(path).content.decode()
    for path, html in pages.items():
        assert " style=" not in html, path
        assert "<style" not in html, path
        assert not re.search(r"<[^>]*\son[a-z]+=", html), (path, re.search(r"<[^>]*\son[a-z]+=[^>]*", html))
        for tag in html.split("<script")[1:]:
            opening = tag.split(">", 1)[0]
            assert "src=" in opening or 'type="application/json"' in opening, (path, opening)


@pytest.mark.django_db
def test_outside_debug_cookies_are_secure_and_https_responses_carry_hsts(client, superuser, settings):
    assert settings.DEBUG is False and settings.KB_HTTPS is True
    csrf = client.get("/login/", secure=True)
    assert csrf.cookies["csrftoken"]["secure"] is True
    assert csrf.cookies["csrftoken"]["samesite"] == "Lax"
    superuser.set_password("a long enough password 1")
    superuser.save()
    signed_in = client.post(
        "/login/", {"username": superuser.username, "password": "a long enough password 1"}, secure=True
    )
    assert signed_in.status_code == 302
    assert signed_in.cookies["sessionid"]["secure"] is True
    assert signed_in.cookies["sessionid"]["httponly"] is True
    response = client.get("/", secure=True)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    # Over plain HTTP (make run on loopback) no HSTS is sent: a browser must not be pinned to https://127.0.0.1.
    assert "Strict-Transport-Security" not in client.get("/").headers


def _settings_in_a_fresh_process(tmp_path, **env: str) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k, None) for k in ('SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'SECURE_HSTS_SECONDS', 'SECURE_PROXY_SSL_HEADER', 'SECURE_SSL_REDIRECT')}))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KB_HTTPS", "KB_HSTS", "DEBUG", "KB_BEHIND"))}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={**base, "DJANGO_SETTINGS_MODULE": "kb.settings", "KB_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_debug_turns_secure_cookies_and_hsts_off_and_a_proxy_header_is_opt_in(tmp_path):
    production = _settings_in_a_fresh_process(tmp_path)
    assert production["SESSION_COOKIE_SECURE"] is True and production["CSRF_COOKIE_SECURE"] is True
    assert production["SECURE_HSTS_SECONDS"] == 31_536_000
    assert production["SECURE_PROXY_SSL_HEADER"] is None  # trusting X-Forwarded-Proto unasked would be spoofable
    debug = _settings_in_a_fresh_process(tmp_path, DEBUG="true")
    assert debug["SESSION_COOKIE_SECURE"] is False and debug["SECURE_HSTS_SECONDS"] == 0
    proxied = _settings_in_a_fresh_process(tmp_path, KB_BEHIND_TLS_PROXY="true")
    assert proxied["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
