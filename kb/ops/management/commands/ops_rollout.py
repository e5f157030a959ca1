"""Answer configurations and rollouts from the command line (the Operations page does the same):

ops_rollout list
ops_rollout configure NAME --prompt answer-v2 --models anthropic:claude-haiku-5-5,extractive [--routes R] [--note N]
ops_rollout create NAME            a rollout of configuration NAME against the current one
ops_rollout evaluate ID            the shadow evaluation, here and now (it prints the verdict)
ops_rollout start ID --share 5     only after a passing evaluation
ops_rollout share ID 25
ops_rollout promote ID
ops_rollout rollback ID [--reason R]
ops_rollout check [ID]             judge rolling rollouts now (beat does every minute)
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from kb.ops import config, services, shadow
from kb.ops.models import AnswerConfiguration, Rollout


class Command(BaseCommand):
    help = "Answer configurations and staged rollouts: configure, create, evaluate, start, share, promote, rollback."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list")
        configure = sub.add_parser("configure")
        configure.add_argument("name")
        configure.add_argument("--prompt", required=True)
        configure.add_argument("--models", required=True, help="the chain, as KB_MODELS")
        configure.add_argument("--routes", default="", help="as KB_ROUTES")
        configure.add_argument("--note", default="")
        create = sub.add_parser("create")
        create.add_argument("name", help="the candidate configuration")
        for name in ("evaluate", "promote", "rollback"):
            one = sub.add_parser(name)
            one.add_argument("rollout", type=int)
            if name == "rollback":
                one.add_argument("--reason", default="rolled back from the command line")
        start = sub.add_parser("start")
        start.add_argument("rollout", type=int)
        start.add_argument("--share", type=int, required=True)
        share = sub.add_parser("share")
        share.add_argument("rollout", type=int)
        share.add_argument("share", type=int)
        check = sub.add_parser("check")
        check.add_argument("rollout", type=int, nargs="?")

    def handle(self, *args, action: str, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except (services.OpsError, Rollout.DoesNotExist, AnswerConfiguration.DoesNotExist) as error:
            raise CommandError(str(error)) from None

    def _list(self, **options):
        current = config.snapshot().current or config.environment()
        self.stdout.write(
            f"current: {current.name} (prompt {current.prompt_version}, chain {','.join(current.models)})"
        )
        for c in AnswerConfiguration.objects.order_by("pk"):
            self.stdout.write(f"configuration {c.pk} {c.name}: prompt {c.prompt_version}, chain {','.join(c.chain)}")
        for r in Rollout.objects.select_related("candidate", "baseline").order_by("pk"):
            self.stdout.write(f"rollout {r.pk}: {r.candidate.name} vs {r.baseline.name}, {r.state}, {r.share} %"
                              + (f" ({r.reason})" if r.reason else ""))  # fmt: skip

    def _configure(self, *, name, prompt, models, routes, note, **options):
        made = services.configuration_create(
            name=name, prompt_version=prompt, models=services.chain_parse(models),
            routes=services.routes_parse(routes), note=note,
        )  # fmt: skip
        self.stdout.write(f"configuration {made.pk} {made.name} stored")

    def _create(self, *, name, **options):
        rollout = services.rollout_create(candidate=AnswerConfiguration.objects.get(name=name))
        self.stdout.write(f"rollout {rollout.pk} created: evaluate it with ops_rollout evaluate {rollout.pk}")

    def _evaluate(self, *, rollout, **options):
        done = shadow.rollout_evaluate(rollout_id=rollout)
        self.stdout.write(json.dumps(done.evaluation, indent=2))
        if not done.evaluation_passed:
            raise CommandError(f"rollout {done.pk} rejected: {done.reason}")
        self.stdout.write(f"rollout {done.pk} passed: start it with ops_rollout start {done.pk} --share 5")

    def _start(self, *, rollout, share, **options):
        services.rollout_start(rollout=rollout, share=share)
        self.stdout.write(f"rollout {rollout} started at {share} %")

    def _share(self, *, rollout, share, **options):
        services.rollout_share_set(rollout=rollout, share=share)
        self.stdout.write(f"rollout {rollout} at {share} %")

    def _promote(self, *, rollout, **options):
        done = services.rollout_promote(rollout=rollout)
        self.stdout.write(f"rollout {rollout} promoted: {done.candidate.name} is current")

    def _rollback(self, *, rollout, reason, **options):
        services.rollout_rollback(rollout=rollout, reason=reason)
        self.stdout.write(f"rollout {rollout} rolled back")

    def _check(self, *, rollout=None, **options):
        ids = [rollout] if rollout else list(Rollout.objects.filter(state="rolling").values_list("pk", flat=True))
        for pk in ids:
            rolled = services.rollout_check(rollout_id=pk)
            self.stdout.write(f"rollout {pk}: " + (f"rolled back: {rolled.reason}" if rolled else "no figure is worse"))
