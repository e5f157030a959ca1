from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kb.accounts.models import AccessGroup


class Command(BaseCommand):
    help = "Create an access group (if missing) and add or remove members."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--add", nargs="*", default=[], metavar="USER")
        parser.add_argument("--remove", nargs="*", default=[], metavar="USER")

    def handle(self, *args, name, add, remove, **options):
        User = get_user_model()
        group, created = AccessGroup.objects.get_or_create(name=name)
        for username, action in [(u, group.members.add) for u in add] + [(u, group.members.remove) for u in remove]:
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user named {username!r}")
            action(user)
        members = ", ".join(group.members.order_by("username").values_list("username", flat=True)) or "(none)"
        self.stdout.write(f"{'created' if created else 'updated'} access group {name}: {members}")
