"""Repeated failed sign-ins lock the account name, and the address, out for a while."""

from datetime import timedelta

import pytest
from django.utils import timezone

from kb.accounts.models import SignInFailure
from kb.accounts.roles import Role
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def sign_in(client, username, password, ip="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_five_failures_lock_the_account_name_even_for_the_right_password(client, employee, settings):
    settings.KB_LOGIN_MAX_FAILURES = 5
    for _ in range(5):
        assert sign_in(client, employee.username, "wrong").status_code == 200
    locked = sign_in(client, employee.username, PASSWORD)
    assert locked.status_code == 429 and 1 <= int(locked["Retry-After"]) <= settings.KB_LOGIN_LOCKOUT_S + 1
    assert "Too many failed sign-ins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    # Another account from another address is not affected.
    other = sign_in(client, "someone-else", "wrong", ip="10.0.0.2")
    assert other.status_code == 200


def test_the_lockout_ends_and_a_success_clears_the_count(client, employee, settings):
    settings.KB_LOGIN_MAX_FAILURES = 2
    settings.KB_LOGIN_LOCKOUT_S = 60
    sign_in(client, employee.username, "wrong")
    sign_in(client, employee.username, "wrong")
    assert sign_in(client, employee.username, PASSWORD).status_code == 429
    # The lockout's time passes: the failures are dated back past it (a real one-second lockout could end before
    # the third request on busy cores, where each password check takes a while).
    SignInFailure.objects.update(at=timezone.now() - timedelta(seconds=61))
    assert sign_in(client, employee.username, PASSWORD).status_code == 302
    assert not SignInFailure.objects.filter(username=employee.username.lower()).exists()


def test_many_failures_from_one_address_lock_that_address(client, employee, settings):
    settings.KB_LOGIN_MAX_FAILURES_PER_IP = 3
    for n in range(3):
        sign_in(client, f"guess{n}", "wrong", ip="10.9.9.9")
    assert sign_in(client, employee.username, PASSWORD, ip="10.9.9.9").status_code == 429
    assert sign_in(client, employee.username, PASSWORD, ip="10.1.1.1").status_code == 302


def test_account_names_are_compared_without_case(client, employee, settings):
    settings.KB_LOGIN_MAX_FAILURES = 2
    sign_in(client, employee.username.upper(), "wrong")
    sign_in(client, employee.username, "wrong")
    assert sign_in(client, employee.username, PASSWORD).status_code == 429


def test_names_are_compared_as_sign_in_reads_them(client, settings):
    # Django's sign-in form reads the name NFKC-normalised, so full-width "ｅｖｅ" signs in as "eve": its
    # failures count against "eve", and "eve"'s lockout holds it too.
    settings.KB_LOGIN_MAX_FAILURES = 5
    eve = UserFactory(username="eve", roles=[Role.EMPLOYEE])
    for n in range(5):
        sign_in(client, "ｅｖｅ" if n % 2 else "eve", "wrong")
    locked = sign_in(client, "ｅｖｅ", PASSWORD)
    assert locked.status_code == 429 and "_auth_user_id" not in client.session
    assert SignInFailure.objects.filter(username=eve.username).count() == 5
    assert sign_in(client, "ＥＶＥ", PASSWORD).status_code == 429
