from kb.llm.cost import budget_links, cost_usd, price_for
from kb.llm.providers import Usage

CHAIN = ["anthropic:claude-sonnet-5-5", "anthropic:claude-haiku-5-5", "extractive"]


def test_prices_match_the_longest_prefix_and_unknown_models_cost_the_most(settings):
    settings.KB_MODEL_PRICES = {"claude": (9, 9, 9, 9), "claude-haiku": (1, 5, 1.25, 0.1), "claude-opus": (5, 25, 6, 1)}
    assert price_for("claude-haiku-5-5") == (1, 5, 1.25, 0.1)
    assert price_for("claude-sonnet-5-5") == (9, 9, 9, 9)
    assert price_for("gpt-something") == (5, 25, 6, 1)


def test_cost_counts_every_kind_of_token(settings):
    settings.KB_MODEL_PRICES = {"m": (3.0, 15.0, 3.75, 0.30)}
    usage = Usage(input_tokens=1000, output_tokens=200, cache_read_input_tokens=2000, cache_creation_input_tokens=100)
    assert cost_usd("m", usage) == round((1000 * 3 + 200 * 15 + 100 * 3.75 + 2000 * 0.3) / 1e6, 6)
    assert cost_usd("extractive", usage) == 0


def test_budgets_downgrade_then_stop_remote_models(settings):
    settings.KB_USER_DAILY_BUDGET_USD = 1.0
    settings.KB_DAILY_BUDGET_USD = 100.0
    settings.KB_BUDGET_DOWNGRADE_FRACTION = 0.8
    assert budget_links(CHAIN, user_spent=0.5, global_spent=0).links == CHAIN
    near = budget_links(CHAIN, user_spent=0.85, global_spent=0)
    assert near.links == ["anthropic:claude-haiku-5-5", "extractive"] and near.reason == "downgraded" and near.notice
    over = budget_links(CHAIN, user_spent=1.0, global_spent=0)
    assert over.links == ["extractive"] and over.reason == "exhausted" and "budget" in over.notice
    assert budget_links(CHAIN, user_spent=0, global_spent=100).reason == "exhausted"


def test_a_zero_budget_means_no_limit(settings):
    settings.KB_USER_DAILY_BUDGET_USD = 0
    settings.KB_DAILY_BUDGET_USD = 0
    assert budget_links(CHAIN, user_spent=1e6, global_spent=1e9).links == CHAIN
