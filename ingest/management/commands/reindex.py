from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from ingest import services
from ingest.models import Document
from kb.search import packing


class Command(BaseCommand):
    help = "Queue documents for reindexing; their current index keeps answering until the new one is ready."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--all", action="store_true", help="every current document")
        group.add_argument("--document", type=int, metavar="ID", help="one document by id")
        group.add_argument("--stale", action="store_true", help="documents embedded by another embedding model")
        group.add_argument(
            "--stalled", action="store_true", help="re-send documents whose processing shows no sign of life"
        )
        group.add_argument(
            "--postings",
            action="store_true",
            help="repack the keyword index's postings by term now (beat moves new ones every minute)",
        )
        parser.add_argument(
            "--stalled-for", type=int, default=None, metavar="SECONDS", help="silence that counts as stalled"
        )

    def handle(self, *args, all, document, stale, stalled, stalled_for, postings, **options):
        if postings:
            result = packing.postings_pack(full=True)
            if result.skipped:
                raise CommandError("another pack is running; try again when it has finished")
            self.stdout.write(f"keyword postings: {result.message()}")
            return
        if stalled:
            after = timedelta(seconds=stalled_for) if stalled_for is not None else None
            count = len(services.documents_resume_stalled(stalled_for=after))
            self.stdout.write(f"{count} stalled documents sent to the workers again")
            return
        if document is not None:
            found = Document.objects.current().filter(pk=document).first()
            if found is None:
                raise CommandError(f"no current document with id {document}")
            if not services.document_reindex(document=found):
                raise CommandError(f"document {document} is {found.status}; wait until it is ready or failed")
            count = 1
        elif stale:
            count = services.documents_reindex_stale_embeddings()
        else:
            count = services.documents_reindex()
        self.stdout.write(f"{count} documents queued for reindexing")
