import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role
from kb.accounts.services import user_role_add


class Command(BaseCommand):
    help = "Create a user with roles and access groups, or add roles and groups to an existing one."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", action="append", default=[], choices=[r.value for r in Role], help="repeatable")
        parser.add_argument(
            "--group", action="append", default=[], help="access group (repeatable; created if missing)"
        )
        parser.add_argument("--email", default="")

    @transaction.atomic
    def handle(self, *args, username, role, group, email, **options):
        User = get_user_model()
        if not username.strip() or len(username) > 150:
            raise CommandError("give a user name of 1 to 150 characters")
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        password = None
        if created:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save()
        for name in role:
            user_role_add(user=user, role=Role(name))
        for name in group:
            AccessGroup.objects.get_or_create(name=name)[0].members.add(user)
        roles = ", ".join(user.groups.order_by("name").values_list("name", flat=True)) or "no role"
        groups = ", ".join(user.access_groups.order_by("name").values_list("name", flat=True)) or "no access group"
        self.stdout.write(f"{'created' if created else 'updated'} {username}: {roles}; {groups}")
        if password:
            self.stdout.write(f"password (shown once): {password}")
