"""`manage.py topics list | load-defaults | train`: the off-limits topics from the command line."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from kb.guard import services
from kb.guard.models import Topic
from kb.guard.topics import lines


class Command(BaseCommand):
    help = "List the off-limits topics, load the four shipped ones, or retrain their classifiers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["list", "load-defaults", "train"])

    def handle(self, *args, action: str, **options) -> None:
        if action == "load-defaults":
            created = services.topics_load_defaults()
            names = ", ".join(t.name for t in created) or "none (they exist already)"
            self.stdout.write(f"loaded: {names}")
        elif action == "train":
            self.stdout.write(f"trained {services.topics_train()} active topic(s)")
        topics = Topic.objects.all()
        if not topics:
            self.stdout.write("no off-limits topics (load the shipped ones with `manage.py topics load-defaults`)")
        for topic in topics:
            state = "active" if topic.active else "inactive"
            self.stdout.write(
                f"{topic.pk}\t{topic.name}\t{state}\t{topic.response}\t{len(lines(topic.examples))} examples\t"
                f"{len(lines(topic.negatives))} near misses"
            )
