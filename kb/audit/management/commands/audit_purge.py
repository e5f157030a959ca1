"""manage.py audit_purge: delete audit events older than KB_AUDIT_RETENTION_DAYS (beat runs it daily)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from kb.audit import services
from kb.audit.signing import SigningKeyError


class Command(BaseCommand):
    help = (
        "Delete audit events older than KB_AUDIT_RETENTION_DAYS, recording where the chain was cut. "
        "Refused (exit 1) while a legal hold is on."
    )

    def handle(self, *args, **options):
        try:
            result = services.audit_purge()
        except (services.AuditError, SigningKeyError) as error:
            raise CommandError(str(error), returncode=1) from None
        self.stdout.write(result.message())
