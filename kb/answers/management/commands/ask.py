"""manage.py ask "QUESTION" [--user U] [--conversation ID] [--json]"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from kb.answers import services


class Command(BaseCommand):
    help = "Ask the knowledge base a question as a user (default: the first superuser) and print the cited answer."

    def add_arguments(self, parser):
        parser.add_argument("question")
        parser.add_argument("--user", help="username to ask as; answers only cite documents this user may read")
        parser.add_argument("--conversation", type=int, help="continue this conversation of the user's")
        parser.add_argument("--json", action="store_true", help="print the answer in the API's JSON shape")

    def handle(self, *args, **options):
        user = self._user(options["user"])
        try:
            result = services.ask(
                options["question"], user, conversation_id=options["conversation"], request_id="manage.py ask"
            )
        except services.AskError as error:
            raise CommandError(str(error)) from None
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2, ensure_ascii=False))
            return
        for notice in result["notices"]:
            self.stdout.write(self.style.WARNING(f"! {notice}"))
        self.stdout.write(result["answer"])
        if result["citations"]:
            self.stdout.write("")
            for citation in result["citations"]:
                where = " / ".join(
                    part for part in (citation["heading"], citation["page"] and f"p. {citation['page']}") if part
                )
                self.stdout.write(f"[{citation['n']}] {citation['title']}" + (f" ({where})" if where else ""))
                self.stdout.write(f"    “{citation['quote']}”")
        if result["nearest_documents"]:
            self.stdout.write("\nNearest documents: " + "; ".join(d["title"] for d in result["nearest_documents"]))
        model = result["model"] or "none"
        flags = [flag for flag, on in (("cached", result["cached"]), ("fallback", result["fallback_used"])) if on]
        self.stdout.write(
            self.style.HTTP_INFO(
                f"\nmodel {model}{' (' + ', '.join(flags) + ')' if flags else ''} · {result['latency_ms']:.0f} ms · "
                f"exchange {result['exchange_id']} · conversation {result['conversation_id']}"
            )
        )

    def _user(self, username: str | None):
        users = get_user_model().objects.filter(is_active=True)
        if username:
            user = users.filter(username=username).first()
            if user is None:
                raise CommandError(f"No active user {username!r}: create one with `manage.py create_user`.")
            return user
        user = users.filter(is_superuser=True).order_by("pk").first()
        if user is None:
            raise CommandError("No superuser to ask as: pass --user USERNAME.")
        return user
