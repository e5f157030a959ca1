"""Stage 1, scope: the documents the asker may read, the index version, the answer configuration (prompt version,
chain and routes: the current one, or a rollout's candidate for the askers in its share, kb/ops/config.py), and
the model chain that today's budget allows. Everything later is keyed by it (the caches by its namespace)."""

from __future__ import annotations

import time

from django.conf import settings

from kb.answers.models import Exchange
from kb.answers.pipeline.types import AskRequest, Scope, Trace
from kb.guard.services import topics_key
from kb.llm import cache, prompts
from kb.llm.cost import budget_links
from kb.ops.config import configuration_for
from kb.search.models import IndexState
from kb.search.retrieval import ReadScope

GLOBAL_SPENT_TTL_S = 5.0  # summing the whole day's spending once per question would cost more than it tells
_global_spent: tuple[float, float] = (0.0, 0.0)  # (monotonic time read, USD)


def _global_spent_today() -> float:
    global _global_spent
    if not settings.KB_DAILY_BUDGET_USD:
        return 0.0
    read_at, value = _global_spent
    if time.monotonic() - read_at > GLOBAL_SPENT_TTL_S:
        value = Exchange.objects.today().spent_usd()
        _global_spent = (time.monotonic(), value)
    return value


def scope(request: AskRequest, trace: Trace) -> Scope:
    read = ReadScope.for_user(request.user)
    state = IndexState.objects.filter(pk=1).only("version").first()
    index_version = state.version if state else 0
    configuration = configuration_for(request.user)
    prompt = prompts.get(configuration.prompt_version)
    user_spent = (
        Exchange.objects.today().of_user(request.user).spent_usd() if settings.KB_USER_DAILY_BUDGET_USD else 0.0
    )
    spent = {"user_spent": user_spent, "global_spent": _global_spent_today()}
    decision = budget_links(list(configuration.models), **spent)
    if decision.notice and not configuration.routes:  # with routes, the route stage says what the tier's budget did
        trace.notices.append(decision.notice)
    return Scope(
        read=read,
        index_version=index_version,
        prompt=prompt,
        chain=tuple(decision.links),
        spent=spent,
        configuration=configuration,
        namespace=cache.namespace(
            scope_key=read.key, index_version=index_version, prompt_version=prompt.version,
            chain=[*decision.links, *_routes_key(configuration.routes)], topics=topics_key(),
        ),
    )  # fmt: skip


def _routes_key(routes) -> list[str]:
    """Routes answer too: two configurations with one prompt and chain but other routes share no cache entry."""
    return [f"route {tier}={','.join(routes[tier])}" for tier in sorted(routes)]
