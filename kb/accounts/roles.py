"""Roles are Django groups carrying one capability permission each; a superuser has them all."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    EMPLOYEE = "Employee", "Employee"
    KNOWLEDGE_ADMIN = "Knowledge admin", "Knowledge admin"
    COMPLIANCE = "Compliance", "Compliance"


# The permission (app_label.codename) that makes a user act in a role.
ROLE_PERMISSIONS: dict[Role, str] = {
    Role.EMPLOYEE: "accounts.ask_questions",
    Role.KNOWLEDGE_ADMIN: "accounts.manage_documents",
    Role.COMPLIANCE: "accounts.view_audit",
}


def has_role(user, role: Role) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(ROLE_PERMISSIONS[role]))


def roles_of(user) -> list[Role]:
    return [role for role in Role if has_role(user, role)]
