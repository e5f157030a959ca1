"""Shared fixtures: real PostgreSQL (embedded), real Celery workers, real Redis, real Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from kb.accounts.roles import Role
from tests.factories import UserFactory

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

    params = connection.settings_dict
    host = params["HOST"]
    name = params["NAME"]
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
    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self.env = env
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
                "1",
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


@pytest.fixture(scope="session")
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
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()


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
        settings.KB_LLM_FIRST_TOKEN_TIMEOUT_S = 2.0
        settings.KB_LLM_TOTAL_TIMEOUT_S = 10.0
        settings.KB_LLM_BACKOFF_BASE_S = 0.01
        settings.KB_LLM_BACKOFF_MAX_S = 0.05
        settings.KB_LLM_RETRIES = 2
        resilience.breakers_reset()
        yield server
        resilience.breakers_reset()


class AsgiServer:
    """The app under uvicorn in a process of its own (the production server), on the test database."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "kb.asgi:application", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=BASE_DIR,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait()

    def _wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.output()}")
            try:
                httpx.get(self.url + "/healthz", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not start within 60 s:\n{self.output()}")

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
        server = AsgiServer(subprocess_env(test_database_url, **extra), tmp_path / f"uvicorn-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
