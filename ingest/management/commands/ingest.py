"""manage.py ingest PATH... [--group G] [--wait]"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError

from ingest import services
from ingest.models import IN_PROGRESS, Document, DocumentStatus
from kb.accounts.models import AccessGroup

# With --wait, if no queued document has been picked up for this long, no worker is running: the
# command then processes the rest itself rather than waiting forever.
NO_WORKER_AFTER_S = 20.0
POLL_S = 0.5


def _files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"{raw}: no such file or folder")
    return found


class Command(BaseCommand):
    help = "Upload files and folders (recursively) as documents, optionally waiting until they are indexed."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument(
            "--group", action="append", default=[], help="access group (repeatable; created if missing)"
        )
        parser.add_argument("--wait", action="store_true", help="wait until every document is ready or failed")

    def handle(self, *args, paths, group, wait, **options):
        files = _files(paths)
        if not files:
            raise CommandError("no files found in " + ", ".join(paths))
        groups = [AccessGroup.objects.get_or_create(name=name)[0] for name in group]
        results = []
        with services.processing_sent_together():
            for index, path in enumerate(files, 1):
                with path.open("rb") as handle:
                    result = services.document_upload(
                        source=File(handle, name=path.name), filename=path.name, access_groups=groups or None
                    )
                results.append((path, result))
                self._bar("uploading", index, len(files))
        self._newline()
        accepted = [r.document.pk for _, r in results if r.accepted and r.document is not None]
        if wait and accepted:
            self._wait(accepted)
        self._summary(results)
        if any(r.outcome in ("failed", "refused") for _, r in results) or (
            wait and Document.objects.filter(pk__in=accepted, status=DocumentStatus.FAILED).exists()
        ):
            sys.exit(1)

    def _wait(self, ids: list[int]) -> None:
        last_change = time.monotonic()
        last_state = None
        while True:
            documents = list(
                Document.objects.filter(pk__in=ids).values("id", "status", "chunks_total", "chunks_embedded")
            )
            pending = [d for d in documents if d["status"] in IN_PROGRESS]
            done = len(documents) - len(pending)
            total_chunks = sum(d["chunks_total"] for d in documents)
            embedded = sum(d["chunks_embedded"] for d in documents if d["status"] in IN_PROGRESS) + sum(
                d["chunks_total"] for d in documents if d["status"] == DocumentStatus.READY
            )
            self._bar("indexing", done, len(documents), f"{embedded}/{total_chunks} passages")
            if not pending:
                break
            state = (done, embedded, tuple(d["status"] for d in pending))
            if state != last_state:
                last_state, last_change = state, time.monotonic()
            elif time.monotonic() - last_change > NO_WORKER_AFTER_S and all(
                d["status"] == DocumentStatus.QUEUED for d in pending
            ):
                self._newline()
                self.stderr.write("no worker is picking up documents; processing them in this process")
                for d in pending:
                    services.document_process(d["id"])
                    last_change = time.monotonic()
            time.sleep(POLL_S)
        self._newline()

    def _summary(self, results) -> None:
        ready = duplicates = 0
        problems = []
        for path, result in results:
            document = Document.objects.filter(pk=result.document.pk).first() if result.document else None
            if result.outcome == "duplicate":
                duplicates += 1
            elif result.outcome in ("failed", "refused"):
                problems.append(f"  {path}: {result.message}")
            elif document is not None and document.status == DocumentStatus.FAILED:
                problems.append(f"  {path}: {document.error_message}")
            elif document is not None and document.status in (DocumentStatus.READY, DocumentStatus.SUPERSEDED):
                ready += 1
        queued = len(results) - ready - duplicates - len(problems)
        self.stdout.write(
            f"{len(results)} files: {ready} ingested, {queued} queued, {duplicates} duplicates, {len(problems)} failed"
        )
        for line in problems:
            self.stdout.write(line)

    def _bar(self, label: str, done: int, total: int, extra: str = "") -> None:
        if not self.stderr.isatty() and done not in (total,):
            return
        width = 30
        filled = int(width * done / total) if total else width
        self.stderr.write(f"\r{label:10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}  ", ending="")
        self.stderr.flush()

    def _newline(self) -> None:
        self.stderr.write("")
