from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kb.accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for USER and print it (it is stored hashed and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("user", help="user name")
        parser.add_argument("--name", default="", help="a label to tell the token apart, e.g. 'ci'")

    def handle(self, *args, user, name, **options):
        User = get_user_model()
        try:
            account = User.objects.get(**{User.USERNAME_FIELD: user})
        except User.DoesNotExist:
            raise CommandError(f"no user named {user!r}: check the spelling or create the user first") from None
        if not account.is_active:
            raise CommandError(f"user {user!r} is inactive: activate the account first")
        _, raw = api_token_create(user=account, name=name)
        self.stderr.write(f"API token for {user} (shown once; send it as 'Authorization: Bearer <token>'):")
        self.stdout.write(raw)
