"""Load (issue "Hardening"): 200 employees asking at once for KB_LOAD_DURATION_S seconds (default 300) against
one uvicorn process on the synthetic 100k-chunk corpus, with the fake Anthropic server answering after 2-4 s
and failing ~1% of its calls with retryable errors.

Each employee (an asyncio task with a user and API token of its own) loops: pick a question (a new one, a
popular one that the answer cache serves once it has been answered, or a follow-up in its conversation),
stream the answer to `done`, think 1-3 s, ask again. Written to var/bench/load.json and asserted:
- every request gets a 200 and a `done` event: no 5xx, no 429, no transport error;
- exchanges recorded == audit events == requests that reached the app (every outcome), none left pending,
  and the audit chain verifies;
- the web process's RSS grows by less than RSS_GROWTH_MAX_MB from the end of the warm-up to the end.
Reported only (a shared 2-core machine makes them noisy): the overhead before the first token (the client's
wait less the model's own latency) and its parts (response headers, waiting for a database slot, the
pipeline before the model call, the model call's own overhead), first-token latency, throughput, fallbacks
and retries, CPU per process, RSS and database connections over time.

The model's latency for a question is drawn from a generator seeded with the question, so that the client
knows what part of its wait was the model's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from django.conf import settings

from kb.answers.models import Conversation, Exchange
from kb.audit.models import AuditEvent, AuditKind
from kb.audit.services import chain_verify
from kb.llm.models import CachedAnswer
from tests.bench import test_retrieval_bench as corpus
from tests.bench.asking import (
    READERS,
    RESTRICTED,
    ask_streamed,
    bench_database,
    bench_employee,
    rss_mb,
    run_async,
    server_env,
    summary,
)
from tests.conftest import AsgiServer
from tests.fake_anthropic import FakeAnthropic, Reply, question_of, quoting_responder

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

DURATION_S = float(os.environ.get("KB_LOAD_DURATION_S", "300"))
# uvicorn worker processes (KB_WEB_PROCESSES in the Procfile): one process is GIL-bound at about one core.
WEB_PROCESSES = int(os.environ.get("KB_LOAD_WEB_PROCESSES", "1"))
EMPLOYEES = 200
RAMP_UP_S = 10.0  # employees start spread over this (a real morning does not start in one millisecond)
THINK_S = (1.0, 3.0)


def _slope_mb_per_min(samples: list[dict]) -> float | None:
    if len(samples) < 3:
        return None
    ts, ys = [s["t_s"] for s in samples], [s["rss_mb"] for s in samples]
    mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
    spread = sum((t - mean_t) ** 2 for t in ts)
    return round(60 * sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / spread, 2)


WARM_UP_SHARE = 0.2  # RSS from here on must not grow
RSS_SAMPLE_S = 5.0
# Before kb/asgi.py fixed glibc's mmap threshold the web RSS rose ~0.2 MB/s for the whole run (+41 MB, and
# still climbing, after the warm-up); with it the RSS is flat within sampling noise.
RSS_GROWTH_MAX_MB = 50.0
SEED = 20261130
PRIMARY = "anthropic:claude-sonnet-5-5"
CHAIN = f"{PRIMARY},anthropic:claude-haiku-5-5,extractive"

# The fake model: 2-4 s before the first word, then a word every CHUNK_DELAY_S; ERROR_RATE of its calls fail
# with a retryable error (529 or 500 at once, or an overloaded_error event after two words).
MODEL_DELAY_S = (2.0, 4.0)
CHUNK_DELAY_S = 0.05
ERROR_RATE = 0.01
ERROR_KINDS = ("529", "500", "error_event")

# What an employee asks: a follow-up in its conversation (after an answer), one of the popular questions
# (answered once, then from the cache), or a question nobody asked before.
FOLLOW_UP_SHARE = 0.15
POPULAR_SHARE = 0.35
POPULAR_QUESTIONS = 40
FOLLOW_UPS_MAX = 3  # then a new conversation
RESTRICTED_EVERY = 10  # every tenth employee also reads the restricted documents (another cache scope)
CLIENT_KEEPALIVE_S = 2.0
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "load.json"


def model_delay_s(question: str) -> float:
    return random.Random(f"{SEED}:{question}").uniform(*MODEL_DELAY_S)


class Model:
    """The fake Anthropic server's default responder: the quoting answer, late, sometimes failing."""

    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.lock = threading.Lock()
        self.calls = 0
        self.injected: Counter[str] = Counter()

    def __call__(self, body: dict) -> Reply:
        with self.lock:
            self.calls += 1
            failing = self.rng.random() < ERROR_RATE
            kind = self.rng.choice(ERROR_KINDS) if failing else ""
            if kind:
                self.injected[kind] += 1
        delay = model_delay_s(question_of(body))
        text = quoting_responder(body).text
        if kind in ("529", "500"):
            return Reply(status=int(kind), delay_s=delay / 4)
        return Reply(text=text, delay_s=delay, chunk_delay_s=CHUNK_DELAY_S, error_after_chunks=2 if kind else None)


def _new_question(rng: random.Random) -> str:
    """Terms drawn as the corpus's are (test_retrieval_bench._queries)."""

    def term() -> str:
        rank = math.floor(corpus.FIRST_CONTENT_RANK * (corpus.VOCABULARY / corpus.FIRST_CONTENT_RANK) ** rng.random())
        return f"w{rank}"

    return " ".join(term() for _ in range(rng.randint(*corpus.QUERY_TERMS)))


def _popular_question(rng: random.Random, popular: list[str]) -> str:
    question = rng.choice(popular)
    # Case and a closing question mark vary; the exact cache normalises both.
    return rng.choice([question, question + "?", question.capitalize(), question.upper() + "?"])


def _follow_up(rng: random.Random) -> str:
    return rng.choice(["and what about {}?", "what about {}", "and {}?", "how does that apply to {}?"]).format(
        " ".join(f"w{rng.randint(corpus.FIRST_CONTENT_RANK, 2000)}" for _ in range(rng.randint(1, 2)))
    )


async def _employee(number: int, client: httpx.AsyncClient, token: str, popular: list[str], stop_at: float) -> list:
    rng = random.Random(f"{SEED}:employee:{number}")
    runs = []
    conversation: int | None = None
    follow_ups = 0
    await asyncio.sleep(rng.uniform(0, min(RAMP_UP_S, DURATION_S / 10)))
    while time.monotonic() < stop_at:
        draw = rng.random()
        if conversation is not None and follow_ups < FOLLOW_UPS_MAX and draw < FOLLOW_UP_SHARE:
            kind, question, follow_ups = "follow_up", _follow_up(rng), follow_ups + 1
        elif draw < FOLLOW_UP_SHARE + POPULAR_SHARE:
            kind, question, conversation, follow_ups = "popular", _popular_question(rng, popular), None, 0
        else:
            kind, question, conversation, follow_ups = "new", _new_question(rng), None, 0
        started = time.monotonic()
        try:
            run = await ask_streamed(client, question, token, conversation_id=conversation)
        except Exception as exc:  # a transport error: counted and asserted on below
            run = {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
        run.update(kind=kind, question=question, employee=number, at=started)
        done = run.pop("done", None)
        if done:
            run["done"] = {key: done[key] for key in ("exchange_id", "outcome", "model", "fallback_used", "cached")}
            conversation = done["conversation_id"] if done["outcome"] in ("answered", "cached") else None
        runs.append(run)
        await asyncio.sleep(rng.uniform(*THINK_S))
    return runs


def _family(pid: int) -> list[int]:
    """The server process and its worker processes (uvicorn --workers)."""
    try:
        parent = psutil.Process(pid)
        return [pid, *(child.pid for child in parent.children(recursive=True))]
    except psutil.Error:
        return [pid]


def _cpu_s(pid: int) -> float:
    total = 0.0
    for member in _family(pid) if pid != os.getpid() else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _rss_mb(pid: int) -> float:
    total = 0.0
    for member in _family(pid):
        try:
            total += rss_mb(member)
        except OSError:
            continue
    return total


def _machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class Sampler(threading.Thread):
    """Every RSS_SAMPLE_S seconds: the web process's RSS, the CPU (in cores) used by the web process, by this
    process (the employees and the fake model) and by the whole machine, and the bench database's open
    connections."""

    def __init__(self, pid: int, database_url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.database_url, self.database = pid, database_url, database
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.last: tuple[float, ...] = ()

    def sample(self) -> dict:
        now = (time.monotonic(), _cpu_s(self.pid), _cpu_s(os.getpid()), _machine_busy_s())
        cores = [None] * 3
        if self.last:
            cores = [round((now[i] - self.last[i]) / (now[0] - self.last[0]), 2) for i in (1, 2, 3)]
        self.last = now
        with psycopg.connect(self.database_url) as db:
            connections = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            ).fetchone()[0]
        sample = {
            "t_s": round(now[0] - self.started, 1),
            "rss_mb": round(_rss_mb(self.pid), 1),
            "db_connections": connections,
            "cpu_cores": dict(zip(("web", "load_generator", "machine"), cores, strict=True)),
        }
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.stopping.wait(RSS_SAMPLE_S):
            self.sample()

    def mean_cores(self) -> dict:
        during = [s["cpu_cores"] for s in self.samples if s["cpu_cores"]["web"] is not None]
        return {key: round(statistics.mean(s[key] for s in during), 2) for key in during[0]} if during else {}


async def _load(url: str, tokens: list[str], popular: list[str]) -> tuple[list[dict], float, list[float]]:
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends, as a load balancer in front of it must
    # (a request sent on a connection the server is closing fails with a reset).
    limits = httpx.Limits(
        max_connections=EMPLOYEES + 20, max_keepalive_connections=EMPLOYEES + 20, keepalive_expiry=CLIENT_KEEPALIVE_S
    )
    lags: list[float] = []

    async def watch_lag(stop_at: float) -> None:
        """This event loop's lateness: the employees' own timings are only as good as it is punctual."""
        while time.monotonic() < stop_at:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            lags.append((time.monotonic() - before - 0.1) * 1000)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.monotonic()
        watcher = asyncio.create_task(watch_lag(started + DURATION_S))
        per_employee = await asyncio.gather(
            *(_employee(n, client, token, popular, started + DURATION_S) for n, token in enumerate(tokens))
        )
        await watcher
        return [run for runs in per_employee for run in runs], time.monotonic() - started, lags


@pytest.mark.timeout(3600)
def test_200_employees_asking_for_minutes(capsys, test_database_url, tmp_path):
    def log(message: str) -> None:
        with capsys.disabled():
            print(f"[bench] {message}", flush=True)

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    with bench_database(test_database_url, log) as database_url:
        # Employees of their own; their earlier runs' records and cache entries go (the audit log stays).
        names = [f"load-employee-{n:03}" for n in range(EMPLOYEES)]
        earlier = Exchange.objects.filter(user__username__in=names)
        CachedAnswer.objects.filter(source_exchange_id__in=earlier.values("pk")).delete()
        Conversation.objects.filter(user__username__in=names).delete()
        earlier.delete()
        employees = [
            bench_employee(
                name,
                groups=(READERS, RESTRICTED) if n % RESTRICTED_EVERY == 0 else (READERS,),
                label="load",
            )
            for n, name in enumerate(names)
        ]
        users = [user for user, _ in employees]
        popular = corpus._queries()[:POPULAR_QUESTIONS]
        model = Model()
        with FakeAnthropic(default=model) as fake:
            env = server_env(
                database_url,
                fake.url,
                KB_MODELS=CHAIN,
                # Budgets on, but far off: their checks are part of each question's cost.
                KB_USER_DAILY_BUDGET_USD="1000",
                KB_DAILY_BUDGET_USD="1000000",
                # On, so that its query is paid for; an employee asks up to ~30 times a minute here.
                KB_RATE_LIMIT_PER_MINUTE="120",
            )
            server = AsgiServer(env, tmp_path / "uvicorn.log", workers=WEB_PROCESSES)
            sampler = Sampler(server.process.pid, database_url, connect_name(database_url))
            try:
                first_seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
                first_exchange = Exchange.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
                rss_start = sampler.sample()
                sampler.start()
                log(f"{EMPLOYEES} employees asking for {DURATION_S:g} s (RSS {rss_start['rss_mb']} MB)")
                runs, wall_s, lags = run_async(_load(server.url, [token for _, token in employees], popular))
                sampler.stopping.set()
                sampler.join()
                rss_end = sampler.sample()
            finally:
                sampler.stopping.set()
                server.stop()
            server_log = server.output()

        exchanges = {
            row["pk"]: row
            for row in Exchange.objects.filter(user__in=users, pk__gt=first_exchange).values(
                "pk", "outcome", "attempts", "fallback_used", "latency"
            )
        }
        audit_events = set(
            AuditEvent.objects.filter(
                seq__gt=first_seq, kind=AuditKind.EXCHANGE, actor_id__in=[u.pk for u in users]
            ).values_list("exchange_id", flat=True)
        )
        chain = chain_verify(triggered_by="load bench")

    statuses = Counter(str(run["status"]) for run in runs)
    done_runs = [run for run in runs if run.get("done")]
    reached = [run for run in runs if run["status"] == 200]
    outcomes = Counter(run["done"]["outcome"] for run in done_runs)
    kinds = Counter(run["kind"] for run in runs)
    db_outcomes = Counter(row["outcome"] for row in exchanges.values())

    def attempts(run: dict) -> list[dict]:
        return exchanges.get(run["done"]["exchange_id"], {}).get("attempts") or []

    modelled = [run for run in done_runs if run["done"]["outcome"] != "cached" and attempts(run)]
    clean = [run for run in modelled if len(attempts(run)) == 1 and run["done"]["model"] == PRIMARY]
    server_overhead = [
        float(exchanges[run["done"]["exchange_id"]]["latency"]["overhead_ms"])
        for run in modelled
        if "overhead_ms" in exchanges[run["done"]["exchange_id"]]["latency"]
    ]
    client_overhead = [
        run["first_ms"] - (model_delay_s(run["question"]) + CHUNK_DELAY_S) * 1000 for run in clean if run["first_ms"]
    ]
    # Where the wait before the first token goes: before the pipeline starts (authentication, the request's
    # checks, waiting for a database slot), the pipeline itself, and the model call less the model's own time.
    server_latency = {run["done"]["exchange_id"]: exchanges[run["done"]["exchange_id"]]["latency"] for run in clean}
    before_pipeline = [
        run["first_ms"] - float(server_latency[run["done"]["exchange_id"]]["first_token_ms"])
        for run in clean
        if run["first_ms"] and "first_token_ms" in server_latency[run["done"]["exchange_id"]]
    ]
    model_leg = [
        float(latency["first_token_ms"])
        - float(latency["overhead_ms"])
        - (model_delay_s(run["question"]) + CHUNK_DELAY_S) * 1000
        for run in clean
        if "first_token_ms" in (latency := server_latency[run["done"]["exchange_id"]]) and "overhead_ms" in latency
    ]
    retried = [run for run in modelled if any(a["outcome"] == "failed" for a in attempts(run))]
    warm = next(
        (s for s in sampler.samples if s["t_s"] >= WARM_UP_SHARE * DURATION_S),
        sampler.samples[0] if sampler.samples else rss_end,
    )
    rss_max = max([s["rss_mb"] for s in sampler.samples] + [rss_end["rss_mb"]])
    tracebacks = server_log.count("Traceback (most recent call last)")
    report = {
        "employees": EMPLOYEES,
        "web_processes": WEB_PROCESSES,
        "duration_s": DURATION_S,
        "wall_s": round(wall_s, 1),
        "cpu_count": os.cpu_count(),
        "chunks": corpus.CHUNKS,
        "chain": CHAIN,
        "model": {
            "first_token_s": list(MODEL_DELAY_S),
            "chunk_delay_s": CHUNK_DELAY_S,
            "error_rate": ERROR_RATE,
            "calls": model.calls,
            "injected_errors": dict(model.injected),
        },
        "requests": len(runs),
        "questions": dict(kinds),
        "statuses": dict(statuses),
        "transport_errors": statuses.get("0", 0),
        "outcomes": dict(outcomes),
        "throughput_asks_per_s": round(len(done_runs) / wall_s, 2),
        # The headline: the client's wait for the first token less the model's own 2-4 s (answers from one clean
        # model call), then where it goes.
        "overhead_before_first_token": summary(client_overhead),
        "overhead_parts": {
            "client_response_headers": summary([run["headers_ms"] for run in clean]),
            "client_headers_to_start_event": summary(
                [run["start_ms"] - run["headers_ms"] for run in clean if run["start_ms"]]
            ),
            "client_wait_before_the_pipeline": summary(before_pipeline),
            "server_begin_phase": summary([float(server_latency[id_].get("begin_ms", 0)) for id_ in server_latency]),
            "server_before_model_call": summary(server_overhead),
            "server_model_call_less_model_delay": summary(model_leg),
            "load_generator_loop_lag": summary(lags),
        },
        "client_first_token": {
            "model_answers": summary([run["first_ms"] for run in modelled if run["first_ms"]]),
            "cached": summary([run["first_ms"] for run in done_runs if run["done"]["cached"] and run["first_ms"]]),
        },
        "client_total": summary([run["total_ms"] for run in done_runs]),
        "fallbacks": sum(run["done"]["fallback_used"] for run in done_runs),
        "answers_with_a_retry": len(retried),
        "resets_streamed": sum(run.get("resets", 0) for run in done_runs),
        "records": {
            "requests_reaching_the_app": len(reached),
            "done_events": len(done_runs),
            "exchanges": len(exchanges),
            "exchanges_by_outcome": dict(db_outcomes),
            "audit_events": len(audit_events),
            "audit_chain": chain.message(),
        },
        "web_rss_mb": {
            "start": rss_start["rss_mb"],
            "warm_up_end": warm["rss_mb"],
            "warm_up_end_at_s": warm["t_s"],
            "end": rss_end["rss_mb"],
            "max": rss_max,
            "growth_after_warm_up": round(rss_end["rss_mb"] - warm["rss_mb"], 1),
            "growth_max_mb": RSS_GROWTH_MAX_MB,
            # A least-squares slope over the second half tells a steady climb from a step during warm-up.
            "slope_second_half_mb_per_min": _slope_mb_per_min(
                [s for s in sampler.samples if s["t_s"] >= DURATION_S / 2]
            ),
        },
        "cpu_cores_mean": sampler.mean_cores(),
        "db_connections_max": max([s["db_connections"] for s in sampler.samples] + [rss_end["db_connections"]]),
        "server_log_tracebacks": tracebacks,
        "samples": sampler.samples,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))

    failed = [run for run in runs if run["status"] != 200 or not run.get("done")]
    assert not failed, failed[:3]
    assert not tracebacks, server_log[server_log.index("Traceback") :][:3000]
    ids = {run["done"]["exchange_id"] for run in done_runs}
    assert set(exchanges) == ids == audit_events, "one exchange and one audit event per request"
    assert len(ids) == len(reached) == len(runs)
    assert "pending" not in db_outcomes
    assert chain.ok, chain.message()
    assert report["web_rss_mb"]["growth_after_warm_up"] < RSS_GROWTH_MAX_MB, report["web_rss_mb"]


def connect_name(database_url: str) -> str:
    return database_url.split("?", 1)[0].rsplit("/", 1)[1]
