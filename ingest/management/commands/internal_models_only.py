from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ingest.models import Document
from ingest.services import documents_set_internal_models_only
from kb.accounts.models import AccessGroup
from kb.audit.models import AuditKind
from kb.audit.services import audit_record


class Command(BaseCommand):
    help = (
        "Mark documents (with all their versions and attachments), or every document of access groups, 'internal "
        "models only': their passages go only to "
        "models on the company's own infrastructure (KB_ENDPOINTS entries marked internal) or the extractive "
        "answer. --off lifts the mark."
    )

    def add_arguments(self, parser):
        parser.add_argument("--document", nargs="*", type=int, default=[], metavar="ID")
        parser.add_argument("--group", nargs="*", default=[], metavar="NAME")
        parser.add_argument("--off", action="store_true", help="lift the mark instead of setting it")

    @transaction.atomic
    def handle(self, *args, document, group, off, **options):
        if not document and not group:
            raise CommandError("name at least one --document ID or --group NAME")
        documents = list(Document.objects.filter(pk__in=document))
        missing = set(document) - {d.pk for d in documents}
        if missing:
            raise CommandError(f"no document with id {', '.join(map(str, sorted(missing)))}")
        groups = list(AccessGroup.objects.filter(name__in=group))
        unknown = set(group) - {g.name for g in groups}
        if unknown:
            raise CommandError(f"no access group named {', '.join(sorted(unknown))}: create it with access_group")
        marked = not off
        changed = documents_set_internal_models_only(document_ids=document, marked=marked)
        AccessGroup.objects.filter(name__in=group).update(internal_models_only=marked)
        audit_record(
            kind=AuditKind.ACCESS_GROUPS,
            data={"internal_models_only": marked, "documents": sorted(changed), "groups": sorted(group)},
        )
        state = "internal models only" if marked else "any model"
        names = [f"document {d.pk} ({d.title})" for d in documents] + [f"group {g.name}" for g in groups]
        self.stdout.write(f"{', '.join(names)}: {state}")
