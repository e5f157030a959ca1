"""Token prices and daily budgets."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from kb.llm.providers import Usage

PER_MILLION = 1_000_000


FREE = (0.0, 0.0, 0.0, 0.0)


def price_for(model: str, *, metered: bool = True) -> tuple[float, float, float, float]:
    """(input, output, cache write, cache read) USD per million tokens, by the longest matching name prefix;
    an unknown model of a vendor (`metered`) costs as much as the dearest known one, so that a budget never
    under-counts; an unknown model on the company's own server (a KB_ENDPOINTS entry marked internal) costs nothing
    per token."""
    prices = settings.KB_MODEL_PRICES
    matches = [prefix for prefix in prices if model.startswith(prefix)]
    if matches:
        return prices[max(matches, key=len)]
    if not metered:
        return FREE
    return max(prices.values(), key=lambda p: (p[1], p[0]))


def link_price(link: str) -> tuple[float, float, float, float]:
    """The price of a chain link (`anthropic:M`, `openai:M`, `ENDPOINT:M`, `extractive`)."""
    if link == "extractive":
        return FREE
    from kb.llm.providers import provider_for  # providers import this module

    provider = provider_for(link)
    return price_for(provider.model, metered=provider.metered)


def cost_usd(model: str, usage: Usage, *, metered: bool = True) -> float:
    if model == "extractive":
        return 0.0
    inp, out, cache_write, cache_read = price_for(model, metered=metered)
    total = (
        usage.input_tokens * inp
        + usage.output_tokens * out
        + usage.cache_creation_input_tokens * cache_write
        + usage.cache_read_input_tokens * cache_read
    )
    return round(total / PER_MILLION, 6)


@dataclass(frozen=True)
class BudgetDecision:
    links: list[str]
    notice: str = ""
    reason: str = ""  # "", "downgraded", "exhausted"


def budget_links(links: list[str], *, user_spent: float, global_spent: float) -> BudgetDecision:
    """The links an answer may use given today's spending: all of them, the cheapest remote one and the
    extractive answer near a limit, or the extractive answer alone at a limit."""
    limits = [
        (spent, limit, who)
        for spent, limit, who in (
            (user_spent, settings.KB_USER_DAILY_BUDGET_USD, "your"),
            (global_spent, settings.KB_DAILY_BUDGET_USD, "the company's"),
        )
        if limit > 0
    ]
    remote = [link for link in links if link != "extractive"]
    for spent, limit, who in limits:
        if spent >= limit:
            return BudgetDecision(
                [link for link in links if link == "extractive"],
                f"Today's model budget ({who} ${limit:.2f}) is used up: this answer quotes the documents "
                "directly. Full answers are back tomorrow.",
                "exhausted",
            )
    for spent, limit, who in limits:
        if spent >= limit * settings.KB_BUDGET_DOWNGRADE_FRACTION and len(remote) > 1:
            cheapest = min(remote, key=lambda link: link_price(link)[1])
            return BudgetDecision(
                [link for link in links if link in (cheapest, "extractive")],
                f"Most of today's model budget ({who} ${limit:.2f}) is used: a smaller model answered.",
                "downgraded",
            )
    return BudgetDecision(list(links))
