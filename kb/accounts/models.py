from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "kb_"  # noqa: S105 - a label, not a secret


class Capability(models.Model):  # noqa: DJ008 - never has rows to print
    """Holds the role permissions; never has rows (a permission needs a model to hang on)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("ask_questions", "Ask questions and rate answers"),
            ("manage_documents", "Upload, replace, delete and reindex documents"),
            ("view_audit", "Search, verify and export the audit log"),
        ]


class AccessGroupQuerySet(models.QuerySet):
    def of_user(self, user) -> AccessGroupQuerySet:
        return self.filter(members=user)


class AccessGroup(models.Model):
    """Who may read a document. A document with no access group is readable by every employee.

    The demo group (`demo`, at most one) holds the bundled demo corpus: every reader reads it, but only while
    no other document is searchable (the rule is in `DocumentQuerySet.in_scope`), so that the demo company's
    policies never answer for a company that has its own documents.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="access_groups", blank=True)
    demo = models.BooleanField(
        default=False, help_text="Holds the demo corpus: read by everyone until the company's own documents are ready"
    )
    internal_models_only = models.BooleanField(
        default=False,
        help_text="Passages of this group's documents go only to models on the company's own infrastructure",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = AccessGroupQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["demo"], condition=models.Q(demo=True), name="accessgroup_one_demo")
        ]

    def __str__(self) -> str:
        return self.name


def hash_token(raw: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough: nobody can brute-force the preimage.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only its sha256 is stored; the raw token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="The first characters, to tell tokens apart")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def generate_raw() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)


class SignInFailure(models.Model):
    """A failed sign-in, kept for KB_LOGIN_LOCKOUT_S: enough of them lock the account name (and the address)
    out for a while, which turns password guessing from seconds into years."""

    username = models.CharField(max_length=150, db_index=True)
    ip = models.GenericIPAddressField(null=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["ip", "at"], name="accounts_signin_ip_at")]

    def __str__(self) -> str:
        return f"{self.username} at {self.at:%Y-%m-%d %H:%M}"
