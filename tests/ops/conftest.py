"""kb/ops fixtures: each test starts with no rollout state held by this process (the database is rolled back
under it after every test), caches off so that every question is answered afresh by its configuration."""

from __future__ import annotations

import pytest

from kb.ops import config


@pytest.fixture(autouse=True)
def fresh_state():
    config.forget()
    yield
    config.forget()


@pytest.fixture
def rollout_settings(settings):
    settings.KB_ANSWER_CACHE_TTL_S = 0
    settings.KB_SEMANTIC_CACHE_MIN_SIMILARITY = 1.0
    settings.KB_ROLLOUT_MIN_SAMPLE = 10
    settings.KB_ROLLOUT_EVAL_LIMIT = 12
    return settings
