"""Writes for accounts: roles, API tokens, the first admin account."""

from __future__ import annotations

import secrets
import unicodedata
from datetime import timedelta
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils import timezone

from kb.accounts.models import ApiToken, hash_token
from kb.accounts.roles import ROLE_PERMISSIONS, Role
from kb.files import write_private

TOKEN_LAST_USED_RESOLUTION = timedelta(minutes=5)


def roles_ensure() -> None:
    """Create the role groups with their permissions (idempotent)."""
    from django.apps import apps

    create_permissions(apps.get_app_config("accounts"), verbosity=0)
    for role, perm in ROLE_PERMISSIONS.items():
        app_label, codename = perm.split(".")
        group, _ = Group.objects.get_or_create(name=role.value)
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def user_role_add(*, user, role: Role) -> None:
    roles_ensure()
    user.groups.add(Group.objects.get(name=role.value))


@transaction.atomic
def api_token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Create a token; returns it with the raw value, which is not stored and cannot be shown again."""
    raw = ApiToken.generate_raw()
    token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], token_hash=hash_token(raw))
    return token, raw


def api_token_authenticate(raw: str):
    """The user behind a raw bearer token, or None."""
    if not raw or len(raw) > 200:
        return None
    token = ApiToken.objects.active().select_related("user").filter(token_hash=hash_token(raw)).first()
    if token is None:
        return None
    now = timezone.now()
    # Recorded to the minute, not on every request: the ask path should not write for bookkeeping.
    if token.last_used_at is None or now - token.last_used_at > TOKEN_LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def first_admin_ensure(*, password_file: Path, username: str = "admin") -> bool:
    """Create the first superuser when no user exists; write its password to `password_file` (0600).

    Returns True when the account was created now.
    """
    User = get_user_model()
    roles_ensure()
    if User.objects.exists():
        return False
    password = secrets.token_urlsafe(18)
    with transaction.atomic():
        user = User.objects.create_superuser(username=username, email="", password=password)
        for role in Role:
            user.groups.add(Group.objects.get(name=role.value))
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.unlink(missing_ok=True)
    write_private(password_file, f"username: {username}\npassword: {password}\n")
    return True


# --- sign-in throttling -----------------------------------------------------------------------------------


def sign_in_key(username: str) -> str:
    """The name failures are counted under: the name as Django's sign-in form reads it (NFKC, so that
    full-width "ｅｖｅ" is "eve"), without surrounding space or case."""
    return unicodedata.normalize("NFKC", username).strip().lower()[:150]


def sign_in_wait_s(*, username: str, ip: str | None) -> int:
    """Seconds before this account name (or this address) may try to sign in again; 0 when it may now."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from kb.accounts.models import SignInFailure

    window = timedelta(seconds=settings.KB_LOGIN_LOCKOUT_S)
    now = timezone.now()
    recent = SignInFailure.objects.filter(at__gte=now - window)
    waits = []
    for failures, limit in (
        (recent.filter(username=sign_in_key(username)), settings.KB_LOGIN_MAX_FAILURES),
        (recent.filter(ip=ip) if ip else recent.none(), settings.KB_LOGIN_MAX_FAILURES_PER_IP),
    ):
        if limit and failures.count() >= limit:
            # Counted from the failure that would fall out of the window first, so that trying again once
            # the wait is over is allowed.
            oldest = failures.order_by("-at").values_list("at", flat=True)[limit - 1]
            waits.append(max(1, int((oldest + window - now).total_seconds()) + 1))
    return max(waits, default=0)


def sign_in_failed(*, username: str, ip: str | None) -> None:
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from kb.accounts.models import SignInFailure

    SignInFailure.objects.create(username=sign_in_key(username), ip=ip or None)
    SignInFailure.objects.filter(at__lt=timezone.now() - timedelta(seconds=settings.KB_LOGIN_LOCKOUT_S)).delete()


def sign_in_succeeded(*, username: str) -> None:
    from kb.accounts.models import SignInFailure

    SignInFailure.objects.filter(username=sign_in_key(username)).delete()
