"""manage.py audit_export --format csv|jsonl [filters] --out FILE: the file, and FILE.manifest.json beside it."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from kb.audit import services
from kb.audit.filters import EXPORT_FORMATS, FEEDBACK_CHOICES, filters_from
from kb.audit.models import EXCHANGE_OUTCOMES, AuditKind


class Command(BaseCommand):
    help = (
        "Export audit events (streamed: any size in little memory) as CSV or JSON Lines, with a manifest "
        "(row range, count, first and last hash, sha256 of the file) in FILE.manifest.json. The export is audited."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
        parser.add_argument("--out", required=True, metavar="FILE", help="where to write; FILE.manifest.json too")
        parser.add_argument("--since", metavar="YYYY-MM-DD", help="events on or after this day (UTC)")
        parser.add_argument("--until", metavar="YYYY-MM-DD", help="events on or before this day (UTC)")
        parser.add_argument("--user", metavar="USERNAME", help="events by this user")
        parser.add_argument("--document", metavar="ID", help="events about this document (version id)")
        parser.add_argument("--model", help="exchanges answered by a model whose name contains this")
        parser.add_argument("--outcome", choices=[value for value, _ in EXCHANGE_OUTCOMES])
        parser.add_argument("--feedback", choices=[value for value, _ in FEEDBACK_CHOICES])
        parser.add_argument("--kind", choices=AuditKind.values, help="one kind of event")
        parser.add_argument("--q", metavar="TEXT", help="exchanges whose question or answer contains this")

    def handle(self, *args, **options):
        names = ("since", "until", "user", "document", "model", "outcome", "feedback", "kind", "q")
        filters, error = filters_from({name: options[name] for name in names if options[name] is not None})
        if filters is None:
            raise CommandError(error)
        out = Path(options["out"])
        if not out.parent.is_dir():
            raise CommandError(f"{out.parent} is not a directory: create it or choose another --out")
        stream = services.audit_export_begin(
            filters=filters, format=options["format"], via=f"manage.py audit_export (OS user {getpass.getuser()})"
        )
        partial = out.with_name(out.name + ".partial")
        with partial.open("wb") as handle:
            for chunk in stream:
                handle.write(chunk)
        os.replace(partial, out)
        manifest_path = out.with_name(out.name + ".manifest.json")
        manifest_path.write_text(json.dumps(stream.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        manifest = stream.manifest or {}
        span = f" (#{manifest['first_seq']}–#{manifest['last_seq']})" if manifest.get("rows") else ""
        self.stdout.write(
            f"{manifest.get('rows', 0):,} events{span} written to {out}; manifest in {manifest_path}; "
            f"sha256 {manifest.get('sha256')}; recorded as export event #{stream.export_seq}"
        )
