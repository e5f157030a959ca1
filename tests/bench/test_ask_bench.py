"""The ask path under uvicorn at 100k chunks, with the fake Anthropic server answering after 2 s.

Three figures (issue #4), written to var/bench/ask.json:
- pipeline overhead before the model is called (server side: guards, caches, embedding, retrieval, records),
  and the client-observed time to the first token less the model's own 2 s, at 10 concurrent askers;
- an exact cache hit end to end (JSON, client-observed);
- 200 concurrent streaming answers held by one web process: every one must complete with no error.

The corpus is the synthetic 100k-chunk index of test_retrieval_bench (built once per server, reused). Its
vectors are random, so the evidence gate is switched off here (every question would otherwise be refused).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from kb.answers.models import Conversation, Exchange
from kb.llm.models import CachedAnswer
from tests.bench import test_retrieval_bench as corpus
from tests.bench.asking import (
    ask_streamed,
    bench_database,
    bench_employee,
    rss_mb,
    run_async,
    server_env,
    summary,
)
from tests.conftest import AsgiServer
from tests.fake_anthropic import FakeAnthropic, quoting_responder

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

MODEL_DELAY_S = 2.0
SEQUENTIAL_QUESTIONS = 50
CONCURRENT_ASKERS = 10
OVERHEAD_QUESTIONS = 100
CACHE_QUESTIONS = 50
CONCURRENT_STREAMS = 200
TARGET_OVERHEAD_P95_MS = 100.0
TARGET_CACHE_HIT_P95_MS = 30.0
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "ask.json"


async def _gather(url: str, token: str, questions: list[str], concurrency: int) -> list[dict]:
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(question: str) -> dict:
            async with gate:
                try:
                    return await ask_streamed(client, question, token)
                except Exception as exc:  # counted as an error below
                    return {"status": 0, "error": f"{type(exc).__name__}: {exc}"}

        return await asyncio.gather(*(one(q) for q in questions))


@pytest.mark.timeout(3600)
def test_ask_overhead_cache_hits_and_200_concurrent_streams(capsys, test_database_url, tmp_path):
    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[bench] {message}", flush=True)

    with bench_database(test_database_url, log) as database_url:
        CachedAnswer.objects.all().delete()
        Exchange.objects.all().delete()
        Conversation.objects.all().delete()
        _, token = bench_employee("bench-employee")
        questions = corpus._queries()

        with FakeAnthropic(default=lambda body: quoting_responder(body, delay_s=MODEL_DELAY_S)) as fake:
            env = server_env(database_url, fake.url)  # one bench user asks hundreds of questions
            server = AsgiServer(env, tmp_path / "uvicorn.log")
            try:
                deadline = time.monotonic() + 120
                while not httpx.get(server.url + "/readyz", timeout=5).json()["checks"]["embeddings"].get("loaded"):
                    assert time.monotonic() < deadline, "the embedding model did not load"
                    time.sleep(0.5)
                run_async(_gather(server.url, token, [f"warm up {q}" for q in questions[:10]], 5))
                rss_before = rss_mb(server.process.pid)

                log(f"{SEQUENTIAL_QUESTIONS} streamed questions, one at a time")
                sequential_runs = run_async(_gather(server.url, token, questions[-SEQUENTIAL_QUESTIONS:], 1))
                log(f"{OVERHEAD_QUESTIONS} streamed questions, {CONCURRENT_ASKERS} at a time")
                overhead_runs = run_async(_gather(server.url, token, questions[:OVERHEAD_QUESTIONS], CONCURRENT_ASKERS))
                log(f"{CACHE_QUESTIONS} repeated questions (exact cache hits)")
                cache_ms = []
                hits = 0
                with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
                    for question in questions[:CACHE_QUESTIONS]:
                        started = time.perf_counter()
                        response = client.post("/api/v1/ask", json={"question": question})
                        assert response.status_code == 200, response.text
                        cache_ms.append((time.perf_counter() - started) * 1000)
                        hits += response.json()["cached"]
                log(f"{CONCURRENT_STREAMS} concurrent streams")
                fresh = [f"{q} {i}" for i, q in enumerate(questions[:CONCURRENT_STREAMS])]
                started = time.perf_counter()
                concurrent_runs = run_async(_gather(server.url, token, fresh, CONCURRENT_STREAMS))
                concurrent_wall_s = time.perf_counter() - started
                rss_after = rss_mb(server.process.pid)
            finally:
                server.stop()

        def server_overhead(runs: list[dict]) -> list[float]:
            ids = [run["done"]["exchange_id"] for run in runs if run.get("done")]
            return [
                float(v) for v in Exchange.objects.filter(pk__in=ids).values_list("latency__overhead_ms", flat=True)
            ]

        overhead = {}
        for label, runs, concurrency in (
            ("sequential", sequential_runs, 1),
            ("concurrent", overhead_runs, CONCURRENT_ASKERS),
        ):
            overhead[label] = {
                "concurrency": concurrency,
                "server_before_model_call": summary(server_overhead(runs)),
                "client_first_token_less_model_delay": summary(
                    [run["first_ms"] - MODEL_DELAY_S * 1000 for run in runs if run.get("first_ms")]
                ),
            }
        concurrent_ids = [run["done"]["exchange_id"] for run in concurrent_runs if run.get("done")]
        answered = Exchange.objects.filter(pk__in=concurrent_ids, outcome="answered").count()
        # The questions are random words: the injection guard may block one; a block is an answer, not an error.
        blocked = Exchange.objects.filter(pk__in=concurrent_ids, outcome="blocked").count()

    errors = [run for run in concurrent_runs if run["status"] != 200 or not run.get("done")]
    report = {
        "chunks": corpus.CHUNKS,
        "model_delay_s": MODEL_DELAY_S,
        "cpu_count": os.cpu_count(),
        "overhead": {**overhead, "target_p95_ms": TARGET_OVERHEAD_P95_MS},
        "exact_cache_hit_end_to_end": {**summary(cache_ms), "hits": hits, "target_p95_ms": TARGET_CACHE_HIT_P95_MS},
        "concurrent_streams": {
            "streams": CONCURRENT_STREAMS,
            "errors": len(errors),
            "answered": answered,
            "blocked": blocked,
            "wall_s": round(concurrent_wall_s, 2),
            "first_token": summary([run["first_ms"] for run in concurrent_runs if run.get("first_ms")]),
            "total": summary([run["total_ms"] for run in concurrent_runs if run.get("total_ms")]),
            "web_rss_mb_before": round(rss_before, 1),
            "web_rss_mb_after": round(rss_after, 1),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report, indent=2))
    assert hits == CACHE_QUESTIONS, "every repeated question is an exact cache hit"
    assert not errors, errors[:3]
    assert answered + blocked == CONCURRENT_STREAMS
