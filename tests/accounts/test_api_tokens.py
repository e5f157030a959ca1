from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from kb.accounts.models import ApiToken, hash_token
from kb.accounts.services import api_token_create


def test_command_prints_the_token_once_and_stores_only_its_hash(employee):
    out = StringIO()
    call_command("create_api_token", employee.username, stdout=out)
    raw = out.getvalue().strip().splitlines()[-1].strip()
    assert raw.startswith("kb_")
    token = ApiToken.objects.get(user=employee)
    assert token.token_hash == hash_token(raw)
    assert raw not in {token.token_hash, token.prefix, token.name}


def test_command_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("create_api_token", "ghost")


def test_bearer_token_authenticates_the_api(client, employee):
    _, raw = api_token_create(user=employee, name="laptop")
    response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200
    assert response.json() == {"username": employee.username, "roles": ["Employee"], "is_superuser": False}
    assert ApiToken.objects.get(user=employee).last_used_at is not None


def test_wrong_revoked_or_missing_tokens_are_refused(client, employee):
    token, raw = api_token_create(user=employee)
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer kb_wrong"}).status_code == 401
    assert client.get("/api/v1/me").status_code == 401
    token.revoked_at = token.created_at
    token.save()
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 401


def test_session_authenticates_the_api(client, compliance):
    client.force_login(compliance)
    assert client.get("/api/v1/me").json()["roles"] == ["Compliance"]


def test_create_user_gives_roles_groups_and_a_password_once(db, client):
    out = StringIO()
    call_command("create_user", "alice", "--role", "Employee", "--group", "Finance", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "created alice: Employee; Finance"
    password = lines[1].split(": ", 1)[1]
    assert client.login(username="alice", password=password)
    out = StringIO()
    call_command("create_user", "alice", "--role", "Compliance", stdout=out)
    assert out.getvalue().splitlines() == ["updated alice: Compliance, Employee; Finance"]
