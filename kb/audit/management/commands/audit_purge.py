"""manage.py audit_purge: delete audit events older than KB_AUDIT_RETENTION_DAYS (beat runs it daily)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from kb.audit import services
from kb.audit.signing import SigningKeyError
from kb.db import connected_as


class Command(BaseCommand):
    help = (
        "Delete audit events older than KB_AUDIT_RETENTION_DAYS, recording where the chain was cut. "
        "Refused (exit 1) while a legal hold is on. Runs as the owner role (KB_DATABASE_OWNER_URL) when set: the "
        "application's role may not delete audit events."
    )

    def handle(self, *args, **options):
        try:
            with connected_as(settings.KB_DATABASE_OWNER_URL):
                result = services.audit_purge()
        except (services.AuditError, SigningKeyError) as error:
            raise CommandError(str(error), returncode=1) from None
        self.stdout.write(result.message())
