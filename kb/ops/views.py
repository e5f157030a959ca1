"""The Operations page: answer configurations, the open rollout with its live figures, and past rollouts.
Knowledge admins (and superusers) use it; every action is one service call, audited there."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from kb.accounts.access import role_required
from kb.accounts.roles import Role
from kb.llm import prompts
from kb.ops import config, services, tasks
from kb.ops.models import AnswerConfiguration, Rollout, RolloutState
from kb.ops.slo import slo_report

operations_required = role_required(Role.KNOWLEDGE_ADMIN)
ACTIONS = ("evaluate", "start", "share", "promote", "rollback")


@operations_required
def ops_home(request):
    rollouts = Rollout.objects.select_related("candidate", "baseline").order_by("-pk")
    open_rollout = rollouts.filter(state__in=[RolloutState.EVALUATING, RolloutState.ROLLING]).first()
    state = config.snapshot()
    environment = config.environment()
    context = {
        "current": state.current or environment,
        # The environment's variables changed since a configuration was stored: they answer only once rolled out.
        "environment_differs": state.current is not None
        and (
            (environment.prompt_version, environment.models, dict(environment.routes))
            != (state.current.prompt_version, state.current.models, dict(state.current.routes))
        ),
        "environment": environment,
        "configurations": AnswerConfiguration.objects.order_by("-pk")[:50],
        "open_rollout": open_rollout,
        "figures": services.rollout_figures(rollout=open_rollout) if open_rollout else {},
        "history": rollouts.exclude(pk=getattr(open_rollout, "pk", None))[:20],
        "shares": settings.KB_ROLLOUT_SHARES,
        "prompt_versions": prompts.available(),
        "min_sample": settings.KB_ROLLOUT_MIN_SAMPLE,
        "slos": slo_report(),
    }
    return render(request, "ops/operations.html", context)


@operations_required
@require_POST
def ops_configuration_create(request):
    try:
        configuration = services.configuration_create(
            name=request.POST.get("name", ""),
            prompt_version=request.POST.get("prompt_version", ""),
            models=services.chain_parse(request.POST.get("chain", "")),
            routes=services.routes_parse(request.POST.get("routes", "")),
            note=request.POST.get("note", "")[:2000],
            actor=request.user,
        )
    except services.OpsError as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Configuration {configuration.name} stored. Roll it out to try it on askers.")
    return redirect("ops_home")


def _evaluate_later(rollout: Rollout) -> None:
    transaction.on_commit(lambda: tasks.rollout_evaluate.delay(rollout.pk))


@operations_required
@require_POST
def ops_rollout_create(request):
    candidate = AnswerConfiguration.objects.filter(pk=request.POST.get("candidate") or 0).first()
    if candidate is None:
        messages.error(request, "Choose the configuration to roll out.")
        return redirect("ops_home")
    try:
        with transaction.atomic():
            rollout = services.rollout_create(candidate=candidate, actor=request.user)
            _evaluate_later(rollout)
    except services.OpsError as refused:
        messages.error(request, str(refused))
    except Exception:  # the broker is down: the rollout stays to be evaluated from the command line
        messages.error(request, "The evaluation could not be queued (the job queue is not reachable): run "
                       "manage.py ops_rollout evaluate on the server.")  # fmt: skip
    else:
        messages.success(request, f"Rollout {rollout.pk} created: the shadow evaluation is running on the golden set.")
    return redirect("ops_home")


@operations_required
@require_POST
def ops_rollout_action(request, rollout_id: int):
    """One of ACTIONS on a rollout, named by the form's button (`action`)."""
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    action = request.POST.get("action", "")
    try:
        if action == "evaluate":
            if rollout.state != RolloutState.EVALUATING:
                raise services.OpsError(f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}.")
            tasks.rollout_evaluate.delay(rollout.pk)
            done = "The shadow evaluation is running again."
        elif action in ("start", "share"):
            try:
                share = int(request.POST.get("share", ""))
            except ValueError:
                raise services.OpsError("Choose a share.") from None
            service = services.rollout_start if action == "start" else services.rollout_share_set
            service(rollout=rollout, share=share, actor=request.user)
            done = f"{rollout.candidate.name} now answers {share} % of askers."
        elif action == "promote":
            services.rollout_promote(rollout=rollout, actor=request.user)
            done = f"{rollout.candidate.name} is now the current configuration for everyone."
        elif action == "rollback":
            services.rollout_rollback(rollout=rollout, reason=request.POST.get("reason", ""), actor=request.user)
            done = f"Rolled back: every next question is answered by {rollout.baseline.name}."
        else:
            raise services.OpsError(f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")
    except services.OpsError as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, done)
    return redirect("ops_home")
