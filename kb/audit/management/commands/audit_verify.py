"""manage.py audit_verify: recompute the audit log's hash chain."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from kb.audit import services


class Command(BaseCommand):
    help = "Recompute the audit log's hash chain: print OK with the count, or name the first broken event (exit 1)."

    def handle(self, *args, **options):
        report = services.chain_verify(triggered_by="command")
        if not report.ok:
            raise CommandError(report.message(), returncode=1)
        self.stdout.write(self.style.SUCCESS(report.message()))
