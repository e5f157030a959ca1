"""Shared by the ask benchmarks (test_ask_bench, test_load_bench): the synthetic 100k-chunk database of
test_retrieval_bench made the default for the test, bench employees with API tokens, the environment of the
uvicorn process, a client for one streamed answer, and small measuring helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from django.db import connection

from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role
from kb.accounts.services import api_token_create, user_role_add
from kb.evaluation import beir
from tests.bench import test_retrieval_bench as corpus
from tests.conftest import subprocess_env

READERS = "bench-readers"  # the group whose documents bench employees read (nine documents in ten)
RESTRICTED = "bench-restricted"  # the other tenth


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p95_ms": round(beir.percentile(values, 0.95), 1),
        "max_ms": round(max(values), 1),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_async(coroutine):
    """asyncio.run in a thread of its own (pytest-django may hold an event loop on this one)."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(coroutine)))
    worker.start()
    worker.join()
    return result[0]


@contextlib.contextmanager
def bench_database(test_database_url: str, log: Callable[[str], None]) -> Iterator[str]:
    """The synthetic 100k-chunk corpus (built on first use, then reused while its parameters stay the same)
    as the default database meanwhile; yields its URL for the processes the bench starts."""
    name = f"kb_bench_{corpus._fingerprint()}"
    database_url = test_database_url.replace(f"/{connection.settings_dict['NAME']}", f"/{name}", 1)
    assert name in database_url
    with beir.isolated_index(name, log=log), _audit_trust_of(name):
        with connection.cursor() as cursor:
            if not corpus._built(cursor):
                log(f"building the synthetic corpus in {name} ({corpus.CHUNKS:,} chunks)")
                corpus._build(log)
        yield database_url


@contextlib.contextmanager
def _audit_trust_of(name: str) -> Iterator[None]:
    """The bench database keeps its audit log from run to run: its signing key and witness are kept beside it
    (for this process and the ones it starts), so that its checkpoints keep verifying."""
    from django.conf import settings
    from django.test import override_settings

    folder = settings.KB_DATA_DIR / "bench-audit" / name
    key, witness = folder / "audit-signing-key.pem", folder / "audit-witness"
    saved = {variable: os.environ.get(variable) for variable in ("KB_AUDIT_SIGNING_KEY", "KB_AUDIT_WITNESS_DIR")}
    os.environ.update(KB_AUDIT_SIGNING_KEY=str(key), KB_AUDIT_WITNESS_DIR=str(witness))
    try:
        with override_settings(KB_AUDIT_SIGNING_KEY=key, KB_AUDIT_WITNESS_DIR=witness):
            yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def bench_employee(username: str, *, groups: tuple[str, ...] = (READERS,), label: str = "bench"):
    """An Employee reading the documents of `groups`, with a fresh API token: (user, raw token)."""
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username)
    user_role_add(user=user, role=Role.EMPLOYEE)
    user.access_groups.set(AccessGroup.objects.filter(name__in=groups))
    _, token = api_token_create(user=user, name=label)
    return user, token


def server_env(database_url: str, model_url: str, **extra: str) -> dict[str, str]:
    """The uvicorn process's environment: the fake model, no evidence gate (the corpus's vectors are random:
    every question would be refused), budgets and the rate limit out of the way of a bench's many asks."""
    return subprocess_env(
        database_url,
        **{
            "ANTHROPIC_API_KEY": "sk-ant-bench",
            "ANTHROPIC_BASE_URL": model_url,
            "KB_MODELS": "anthropic:claude-sonnet-5-5,extractive",
            "KB_EVIDENCE_MIN_SCORE": "-1",
            "KB_USER_DAILY_BUDGET_USD": "0",
            "KB_DAILY_BUDGET_USD": "0",
            "KB_RATE_LIMIT_PER_MINUTE": "0",
            "KB_USER_ASKS_IN_FLIGHT": "0",  # one bench account holds many streams at once
            "KB_WARM_EMBEDDINGS": "true",
            "LOG_LEVEL": "WARNING",
            **extra,
        },
    )


async def ask_streamed(
    client: httpx.AsyncClient, question: str, token: str, *, conversation_id: int | None = None
) -> dict:
    """POST /api/v1/ask with stream=true, read to the end: status, client-observed times (ms) to the response
    headers, the `start` event, the first `delta` and the end, the `done` result, and the number of resets."""
    body: dict = {"question": question, "stream": True}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    started = time.perf_counter()
    first = start = None
    done = None
    resets = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with client.stream("POST", "/api/v1/ask", json=body, headers=headers) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "error": (await response.aread()).decode()[:300]}
        headers_ms = (time.perf_counter() - started) * 1000
        buffer = ""
        async for piece in response.aiter_text():
            buffer += piece
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                kind = block.split("\n", 1)[0].removeprefix("event: ")
                if kind == "start":
                    start = (time.perf_counter() - started) * 1000
                elif kind == "delta" and first is None:
                    first = (time.perf_counter() - started) * 1000
                elif kind == "reset":
                    resets += 1
                elif kind == "done":
                    done = json.loads(block.split("data: ", 1)[1])["result"]
    total = (time.perf_counter() - started) * 1000
    return {
        "status": 200,
        "headers_ms": headers_ms,
        "start_ms": start,
        "first_ms": first,
        "total_ms": total,
        "done": done,
        "resets": resets,
    }
