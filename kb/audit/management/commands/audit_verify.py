"""manage.py audit_verify [--witness PATH]: recompute the audit log's hash chain and check it against the signed
checkpoints in the witness."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from kb.audit import services
from kb.audit.signing import SigningKeyError


class Command(BaseCommand):
    help = (
        "Recompute the audit log's hash chain and check it against the signed checkpoints kept outside the "
        "database: print OK with the count, or every problem found with its event number (exit 1)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--witness",
            metavar="PATH",
            help="check against this copy of the witness (a file, e.g. from the syslog host, or a folder) "
            "instead of KB_AUDIT_WITNESS_DIR",
        )

    def handle(self, *args, **options):
        witness = Path(options["witness"]) if options.get("witness") else None
        if witness is not None and not witness.exists():
            raise CommandError(f"{witness} does not exist: give the witness file or folder to check against")
        try:
            report = services.chain_verify(triggered_by="command", witness=witness)
        except SigningKeyError as error:
            raise CommandError(str(error), returncode=2) from None
        if not report.ok:
            raise CommandError(report.message(), returncode=1)
        self.stdout.write(self.style.SUCCESS(report.message()))
