"""Writes of answer configurations and rollouts; every change is audited and renews the deployment's stamp (the
web processes pick it up on their next question, kb/ops/config.py).

Transitions: evaluating -> rejected (the shadow evaluation fell below the current configuration) | rolling
(started at a share, only after a passing evaluation) -> promoted (the candidate becomes current) | rolled_back
(by hand, or automatically when its figures are worse, see kb/ops/figures.py). An evaluating rollout may be
dropped (rolled back) too.
"""

from __future__ import annotations

import logging
import os
import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from kb.audit.services import audit_record
from kb.llm import links as chain_links
from kb.llm import prompts
from kb.ops import figures as ops_figures
from kb.ops.models import AnswerConfiguration, Deployment, Rollout, RolloutState

logger = logging.getLogger(__name__)


class OpsError(Exception):
    """A change that cannot be made as asked; the message says what to do."""


def _has_key(variable: str) -> bool:
    return bool(getattr(settings, variable, "") or os.environ.get(variable))


def _chain(what: str, links: list[str]) -> list[str]:
    try:
        return chain_links.chain_check(what, links, endpoints=settings.KB_ENDPOINTS, has_key=_has_key)
    except chain_links.LinkError as error:
        raise OpsError(str(error)) from None


def chain_parse(text: str) -> list[str]:
    return [link.strip() for link in (text or "").split(",") if link.strip()]


def routes_parse(text: str) -> dict[str, list[str]]:
    try:
        return chain_links.routes_parse(text or "")
    except chain_links.LinkError as error:
        raise OpsError(str(error)) from None


def _audit(kind: str, action: str, actor, **data) -> None:
    audit_record(kind=kind, actor=actor, data={"action": action, **data})


def _rollout_data(rollout: Rollout) -> dict:
    return {
        "rollout_id": rollout.pk,
        "candidate": rollout.candidate.as_dict(),
        "baseline": rollout.baseline.as_dict(),
        "state": rollout.state,
        "share": rollout.share,
    }


# --- configurations ---------------------------------------------------------------------------------------


def configuration_create(
    *, name: str, prompt_version: str, models: list[str], routes: dict[str, list[str]] | None = None,
    note: str = "", actor=None, from_environment: bool = False,
) -> AnswerConfiguration:  # fmt: skip
    """A new configuration (never changed afterwards: a change is a new configuration)."""
    name = (name or "").strip()
    if not name:
        raise OpsError("Give the configuration a name.")
    if AnswerConfiguration.objects.filter(name=name).exists():
        raise OpsError(f"A configuration named {name!r} exists already: configurations never change, pick a new name.")
    try:
        prompts.get(prompt_version)  # the id (answer-v2); the exchange records its hashed version
    except prompts.PromptError as error:
        raise OpsError(str(error)) from None
    chain = _chain("the model chain", list(models))
    checked_routes = {tier: _chain(f"route {tier}", list(links)) for tier, links in (routes or {}).items()}
    with transaction.atomic():
        configuration = AnswerConfiguration.objects.create(
            name=name,
            prompt_version=prompt_version,
            chain=chain,
            routes=checked_routes,
            fingerprint=AnswerConfiguration.fingerprint_of(prompt_version, chain, checked_routes),
            from_environment=from_environment,
            note=note,
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        _audit("configuration", "created", actor, configuration=configuration.as_dict(), note=note)
    return configuration


def _environment_configuration() -> AnswerConfiguration:
    routes = {tier: list(chain) for tier, chain in settings.KB_ROUTES.items()}
    fingerprint = AnswerConfiguration.fingerprint_of(settings.KB_PROMPT_VERSION, list(settings.KB_MODELS), routes)
    found = AnswerConfiguration.objects.filter(fingerprint=fingerprint, from_environment=True).first()
    if found is not None:
        return found
    return configuration_create(
        name=f"environment {fingerprint[:8]}",
        prompt_version=settings.KB_PROMPT_VERSION,
        models=list(settings.KB_MODELS),
        routes=routes,
        note="KB_PROMPT_VERSION, KB_MODELS and KB_ROUTES when the first configuration was stored",
        from_environment=True,
    )


def _stamp(deployment: Deployment) -> None:
    deployment.stamp = uuid.uuid4().hex
    deployment.save()


@transaction.atomic
def deployment_get() -> Deployment:
    """The deployment row, locked; created with the environment's configuration as current on first use."""
    deployment = Deployment.objects.select_for_update().filter(pk=1).first()
    if deployment is None:
        Deployment.objects.get_or_create(pk=1, defaults={"stamp": uuid.uuid4().hex})
        deployment = Deployment.objects.select_for_update().get(pk=1)
    if deployment.current is None:
        deployment.current = _environment_configuration()
        _stamp(deployment)
    return deployment


# --- rollouts ---------------------------------------------------------------------------------------------


def _locked(rollout: Rollout | int) -> Rollout:
    pk = rollout.pk if isinstance(rollout, Rollout) else rollout
    return Rollout.objects.select_for_update().select_related("candidate", "baseline").get(pk=pk)


def _share_check(share: int) -> int:
    if not isinstance(share, int) or not 1 <= share <= 100:
        raise OpsError("A share is a whole percentage from 1 to 100.")
    return share


@transaction.atomic
def rollout_create(*, candidate: AnswerConfiguration, actor=None) -> Rollout:
    """A rollout of `candidate` against the current configuration, to be evaluated before it gets any traffic."""
    deployment = deployment_get()
    current = deployment.current
    assert current is not None  # deployment_get stores the environment's when none is current
    if Rollout.objects.open().exists():
        raise OpsError("Another rollout is open: promote it or roll it back first.")
    if candidate.fingerprint == current.fingerprint:
        raise OpsError(f"{candidate.name} answers exactly as the current configuration: nothing to roll out.")
    rollout = Rollout.objects.create(candidate=candidate, baseline=current, created_by=actor)
    _audit("rollout", "created", actor, **_rollout_data(rollout))
    return rollout


@transaction.atomic
def rollout_evaluation_record(*, rollout: Rollout | int, evaluation: dict, passed: bool) -> Rollout:
    """The shadow evaluation's verdict: a failing one rejects the rollout (it never gets traffic)."""
    rollout = _locked(rollout)
    if rollout.state != RolloutState.EVALUATING:
        raise OpsError(f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}: it is not being evaluated.")
    rollout.evaluation = evaluation
    rollout.evaluation_passed = passed
    if not passed:
        rollout.state = RolloutState.REJECTED
        rollout.reason = "shadow evaluation below the current configuration: " + "; ".join(evaluation["failures"])
        rollout.finished_at = timezone.now()
    rollout.save()
    _audit("rollout", "evaluated", None, **_rollout_data(rollout), passed=passed, evaluation=evaluation)
    return rollout


@transaction.atomic
def rollout_start(*, rollout: Rollout | int, share: int, actor=None) -> Rollout:
    rollout = _locked(rollout)
    share = _share_check(share)
    if rollout.state != RolloutState.EVALUATING:
        raise OpsError(f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}: it cannot be started.")
    if rollout.evaluation_passed is not True:
        raise OpsError(
            "The candidate has no passing shadow evaluation yet: run the evaluation (Operations page or "
            f"manage.py ops_rollout evaluate {rollout.pk}) and start it when it has passed."
        )
    deployment = deployment_get()
    if deployment.current_id != rollout.baseline_id:
        raise OpsError("The current configuration changed since this rollout was created: create a new rollout.")
    rollout.state, rollout.share, rollout.started_at = RolloutState.ROLLING, share, timezone.now()
    rollout.save()
    _stamp(deployment)
    _audit("rollout", "started", actor, **_rollout_data(rollout))
    return rollout


@transaction.atomic
def rollout_share_set(*, rollout: Rollout | int, share: int, actor=None) -> Rollout:
    rollout = _locked(rollout)
    share = _share_check(share)
    if rollout.state != RolloutState.ROLLING:
        raise OpsError(f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}: its share cannot change.")
    before, rollout.share = rollout.share, share
    rollout.save()
    _stamp(deployment_get())
    _audit("rollout", "share_changed", actor, **_rollout_data(rollout), share_before=before)
    return rollout


def _figures_of(rollout: Rollout) -> dict:
    if rollout.started_at is None:
        return {}
    found = ops_figures.configuration_figures(
        configuration_ids=[rollout.candidate_id, rollout.baseline_id], since=rollout.started_at
    )
    candidate, baseline = found[rollout.candidate_id], found[rollout.baseline_id]
    findings = ops_figures.judge(candidate, baseline)
    return {
        "candidate": candidate,
        "baseline": baseline,
        "findings": [finding.as_dict() for finding in findings],
        "at": timezone.now().isoformat(),
    }


def rollout_figures(*, rollout: Rollout) -> dict:
    """The live figures of a rollout (for the page; nothing is written)."""
    return _figures_of(rollout)


@transaction.atomic
def rollout_promote(*, rollout: Rollout | int, actor=None) -> Rollout:
    """The candidate becomes the current configuration for everyone."""
    rollout = _locked(rollout)
    if rollout.state != RolloutState.ROLLING:
        raise OpsError(
            f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}: only a rolling one is promoted."
        )
    deployment = deployment_get()
    rollout.state, rollout.share, rollout.finished_at = RolloutState.PROMOTED, 100, timezone.now()
    rollout.figures = _figures_of(rollout)
    rollout.reason = "promoted by hand"
    rollout.save()
    deployment.current = rollout.candidate
    _stamp(deployment)
    _audit("rollout", "promoted", actor, **_rollout_data(rollout), figures=rollout.figures)
    return rollout


@transaction.atomic
def rollout_rollback(*, rollout: Rollout | int, reason: str, actor=None, figures: dict | None = None) -> Rollout:
    """Nobody gets the candidate any more: the current configuration answers every next question."""
    rollout = _locked(rollout)
    if rollout.state not in (RolloutState.ROLLING, RolloutState.EVALUATING):
        raise OpsError(f"Rollout {rollout.pk} is {rollout.get_state_display().lower()}: there is nothing to roll back.")
    reason = (reason or "").strip() or "rolled back by hand"
    rollout.state, rollout.finished_at, rollout.reason = RolloutState.ROLLED_BACK, timezone.now(), reason
    rollout.figures = figures if figures is not None else _figures_of(rollout)
    rollout.save()
    _stamp(deployment_get())
    _audit("rollout", "rolled_back", actor, **_rollout_data(rollout), reason=reason, figures=rollout.figures)
    return rollout


def rollout_check(*, rollout_id: int) -> Rollout | None:
    """Judge a rolling rollout on its exchanges so far; roll it back at once when any figure is worse. Returns
    the rollout when it was rolled back."""
    rollout = Rollout.objects.select_related("candidate", "baseline").filter(pk=rollout_id).first()
    if rollout is None or rollout.state != RolloutState.ROLLING:
        return None
    figures = _figures_of(rollout)
    worse = [finding for finding in figures["findings"] if finding["worse"]]
    if not worse:
        return None
    reason = "automatic: worse than the current configuration on " + "; ".join(
        f"{finding['metric']} {finding['why']}" for finding in worse
    )
    try:
        rolled = rollout_rollback(rollout=rollout, reason=reason, figures=figures)
    except OpsError:  # another process rolled it back (or promoted it) first
        return None
    logger.warning("rollout %s rolled back: %s", rollout_id, reason)
    return rolled


def exchange_recorded(*, rollout_id: int | None, arm: str) -> None:
    """After an exchange of a rollout's candidate is committed: check the rollout (one aggregate query)."""
    if rollout_id is None or arm != "candidate":
        return
    try:
        rollout_check(rollout_id=rollout_id)
    except Exception:  # the answer is recorded; a failed check is retried by the next exchange or by beat
        logger.exception("rollout %s: the check failed", rollout_id)


def rollouts_check() -> int:
    """Beat: check every rolling rollout (the exchanges check their own after each answer; this catches the
    rest, e.g. thumbs-down given later)."""
    rolled = 0
    for pk in Rollout.objects.filter(state=RolloutState.ROLLING).values_list("pk", flat=True):
        rolled += rollout_check(rollout_id=pk) is not None
    return rolled
