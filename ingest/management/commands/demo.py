from django.core.management.base import BaseCommand

from ingest import services
from ingest.models import Document


class Command(BaseCommand):
    help = (
        "Load or remove the bundled demo corpus. It sits in its own access group and answers only while none "
        "of your own documents is ready."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--load", action="store_true", help="upload the demo documents (again)")
        group.add_argument("--remove", action="store_true", help="delete every demo document, audited")

    def handle(self, *args, load, remove, **options):
        if remove:
            count = services.demo_corpus_remove()
            self.stdout.write(f"{count} demo document versions deleted" if count else "no demo documents to remove")
            return
        results = services.demo_corpus_load()
        loaded = sum(result.accepted for result in results)
        already = sum(result.outcome == "duplicate" for result in results)
        for result in results:
            if result.outcome in ("failed", "refused"):
                self.stderr.write(result.message)
        hidden = Document.objects.searchable().own().exists()
        self.stdout.write(
            f"{loaded} demo documents queued for indexing, {already} already loaded"
            + ("; your own documents are ready, so the demo ones will not answer questions" if hidden else "")
        )
