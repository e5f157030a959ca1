"""Shared fixtures: real PostgreSQL (embedded), real Celery workers, real Redis, real Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

from kb.accounts.roles import Role
from tests.factories import AccessGroupFactory, UserFactory

if TYPE_CHECKING:
    from ingest.models import Document
    from kb.accounts.models import AccessGroup

BASE_DIR = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test database, dropped cleanly at the end even when a server thread or a killed worker
    process left a connection open (otherwise the drop fails and the database is left behind)."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def audit_key_and_witness(settings, tmp_path):
    """Each test signs with a key of its own and keeps its own witness (the database is rolled back after each
    test; a shared witness would keep lines whose rows are gone)."""
    settings.KB_AUDIT_SIGNING_KEY = tmp_path / "audit-signing-key.pem"
    settings.KB_AUDIT_WITNESS_DIR = tmp_path / "audit-witness"
    return settings


@pytest.fixture
def employee(db):
    return UserFactory(roles=[Role.EMPLOYEE])


@pytest.fixture
def knowledge_admin(db):
    return UserFactory(roles=[Role.KNOWLEDGE_ADMIN])


@pytest.fixture
def compliance(db):
    return UserFactory(roles=[Role.COMPLIANCE])


@pytest.fixture
def superuser(db):
    return UserFactory(is_superuser=True, is_staff=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def test_database_url(django_db_setup, django_db_blocker) -> str:
    """A URL for the test database, for processes the tests start (workers, commands)."""
    from django.db import connection

    return database_url_for(connection.settings_dict["NAME"])


def database_url_for(name: str) -> str:
    """A URL for database `name` on the test database's server, with the test database's credentials."""
    from django.db import connection

    params = connection.settings_dict
    host = params["HOST"]
    user = params["USER"] or "postgres"
    if host.startswith("/"):
        return f"postgresql://{user}@/{name}?host={host}"
    return f"postgresql://{user}:{params['PASSWORD']}@{host}:{params['PORT'] or 5432}/{name}"


def subprocess_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url,
            "KB_DATA_DIR": str(settings.KB_DATA_DIR),
            "PYTHONPATH": str(BASE_DIR),
        }
    )
    env.update(extra)
    return env


class Worker:
    """A Celery worker process; tests use a pool of one process (the product's default is in settings)."""

    def __init__(self, env: dict[str, str], log: Path, *, concurrency: int = 1):
        self.log = log
        self.env = env
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "kb",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(self.concurrency),
                "--without-mingle",
                "--without-gossip",
                "--hostname",
                f"test-{os.getpid()}-{time.time_ns()}@%h",
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int | None = None) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        import signal

        os.killpg(self.process.pid, sig or signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def queue(self) -> str:
        """What waits in this worker's folder queue and in the one this process sends to (when a test times out)."""
        folder = Path(self.env.get("KB_BROKER_DIR") or Path(self.env["KB_DATA_DIR"]) / "broker") / "queue"
        sent_to = Path(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}).get("data_folder_out", "-"))
        listing = sorted(os.listdir(folder)) if folder.is_dir() else "(missing)"
        return f"worker's queue {folder}: {listing}; this process sends to {sent_to}"


def _purge_embedded_queue() -> None:
    queue = settings.KB_DATA_DIR / "broker" / "queue"
    if queue.exists():
        shutil.rmtree(queue)
    queue.mkdir(parents=True)


@pytest.fixture(scope="session")
def celery_worker(test_database_url, tmp_path_factory):
    """A real Celery worker process on the embedded (folder) broker, using the test database.

    Tests that need it must also use `transactional_db`, so that what they write is committed and
    visible to the worker.
    """
    _purge_embedded_queue()
    worker = Worker(
        subprocess_env(test_database_url, KB_DB_POOL_SIZE="0"), tmp_path_factory.mktemp("worker") / "worker.log"
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: `make test` installs it (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


# One browser per module, not per session: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and every later test that runs one itself (asyncio.run, async_to_sync) would be refused.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs it (Debian: apt-get install chromium)")
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser tab. Every browser test also checks that the Content-Security-Policy refused nothing
    on the pages it visited (an inline script or style of ours would break silently in production)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15000)
    # Assertions wait as long as actions: the first answer of a newly started server, on two cores shared with the
    # other test process, took over expect's 5 s default in fresh-clone CI runs (stop 37).
    from playwright.sync_api import expect

    expect.set_options(timeout=15000)
    refused: list[str] = []
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
    )
    yield page
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"


PRIMARY = "anthropic:claude-sonnet-5-5"
FALLBACK = "anthropic:claude-haiku-5-5"


@pytest.fixture
def fake_anthropic(settings):
    """A fake Anthropic server the model layer talks to through the official SDK, with short timeouts and
    fresh circuit breakers. Script replies with `fake_anthropic.then(Reply(...))`."""
    from kb.llm import resilience
    from tests.fake_anthropic import FakeAnthropic, quoting_responder

    with FakeAnthropic(default=quoting_responder) as server:
        settings.ANTHROPIC_API_KEY = "sk-ant-test-key"
        settings.ANTHROPIC_BASE_URL = server.url
        settings.KB_MODELS = [PRIMARY, FALLBACK, "extractive"]
        settings.KB_LLM_CONNECT_TIMEOUT_S = 1.0
        settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 5.0  # a loaded test machine is slow; hang tests set less
        settings.KB_LLM_TOTAL_TIMEOUT_S = 10.0
        settings.KB_LLM_BACKOFF_BASE_S = 0.01
        settings.KB_LLM_BACKOFF_MAX_S = 0.05
        settings.KB_LLM_RETRIES = 2
        resilience.breakers_reset()
        yield server
        resilience.breakers_reset()


OPENAI_LINK = "openai:gpt-4.1-mini"
SELFHOSTED_LINK = "selfhosted:llama-3.1-8b-instruct"


@pytest.fixture
def fake_openai(settings):
    """A fake OpenAI-compatible server the model layer talks to through the official `openai` SDK, both as
    `openai:` (OPENAI_BASE_URL) and as the named endpoint `selfhosted` (KB_ENDPOINTS, on the company's own
    infrastructure); short timeouts and fresh breakers. Script replies with `fake_openai.then(Reply(...))`."""
    from kb.llm import resilience
    from kb.llm.links import Endpoint
    from tests.fake_openai import FakeOpenAI, quoting_responder

    with FakeOpenAI(default=quoting_responder) as server:
        settings.OPENAI_API_KEY = "sk-openai-test-key"
        settings.OPENAI_BASE_URL = server.url
        settings.KB_ENDPOINTS = {"selfhosted": Endpoint("selfhosted", server.url, internal=True)}
        settings.KB_MODELS = [OPENAI_LINK, "extractive"]
        settings.KB_LLM_CONNECT_TIMEOUT_S = 1.0
        settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 5.0
        settings.KB_LLM_TOTAL_TIMEOUT_S = 10.0
        settings.KB_LLM_BACKOFF_BASE_S = 0.01
        settings.KB_LLM_BACKOFF_MAX_S = 0.05
        settings.KB_LLM_RETRIES = 2
        resilience.breakers_reset()
        yield server
        resilience.breakers_reset()


class AsgiServer:
    """The app under uvicorn in a process of its own (the production server), on the test database."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.workers = workers
        more = ["--workers", str(workers)] if workers > 1 else []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "kb.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *more,
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait()

    def _wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 90
        loaded_in_a_row = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.output()}")
            try:
                # Ready once the embedding model is loaded: the first question then answers in time. With
                # several worker processes any one may answer: wait for a run of loaded answers.
                checks = httpx.get(self.url + "/readyz", timeout=2).json()["checks"]
                loaded_in_a_row = loaded_in_a_row + 1 if checks["embeddings"].get("loaded") else 0
                if loaded_in_a_row >= 1 + 3 * (self.workers - 1):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                loaded_in_a_row = 0
            time.sleep(0.2)
        raise RuntimeError(f"uvicorn was not ready within 90 s:\n{self.output()}")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def asgi_server(test_database_url, tmp_path):
    """Start the app under uvicorn with extra environment variables: `asgi_server(KB_MODELS=...)`."""
    servers: list[AsgiServer] = []

    def start(**extra: str) -> AsgiServer:
        env = subprocess_env(test_database_url, **{"KB_WARM_EMBEDDINGS": "true", **extra})
        server = AsgiServer(env, tmp_path / f"uvicorn-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- a small corpus for the ask pipeline, its pages and its guards ---------------------------------------------

TRAVEL = """# Travel policy

## Trains and flights
Employees travel by train for any journey under six hours. Flights need the approval of a director.
First class is allowed on trains only for journeys longer than three hours.

## Hotels
The hotel limit is 180 euros per night in Amsterdam and 150 euros per night in Rotterdam.
Book hotels through the travel desk so that the company rate applies.
"""

SECURITY = """# Security handbook

## Passwords
Passwords must be at least 14 characters long and are never shared with anyone, including IT staff.
A password manager is installed on every company laptop.

## VPN
Connect to the VPN before opening any internal system from outside the office.
"""

LEAVE = """# Parental leave

Every parent receives sixteen weeks of paid parental leave, to be taken within the first year.
Tell your manager at least two months before the leave starts.
"""


@dataclass
class Corpus:
    travel: Document
    security: Document
    leave: Document
    hr: AccessGroup


@pytest.fixture
def corpus(db) -> Corpus:
    """Three small documents ingested through the real pipeline; the leave policy is HR-only."""
    from tests.search.conftest import ingest_file

    hr = AccessGroupFactory(name="HR")
    return Corpus(
        travel=ingest_file(TRAVEL, "travel-policy.md"),
        security=ingest_file(SECURITY, "security-handbook.md"),
        leave=ingest_file(LEAVE, "parental-leave.md", groups=[hr]),
        hr=hr,
    )


@pytest.fixture
def hr_employee(corpus):
    user = UserFactory(roles=[Role.EMPLOYEE])
    user.access_groups.add(corpus.hr)
    return user


def ask_and_leave(question: str, user) -> int:
    """Ask as a client that goes away once the first words arrive; returns the exchange's id."""
    from asgiref.sync import async_to_sync

    from kb.answers import services

    async def leave_after_the_first_words() -> int:
        stream = services.ask_stream(question, user)
        exchange_id = 0
        async for event in stream:
            if event["type"] == "start":
                exchange_id = event["exchange_id"]
            if event["type"] == "delta":
                break
        await stream.aclose()
        return exchange_id

    return async_to_sync(leave_after_the_first_words)()
