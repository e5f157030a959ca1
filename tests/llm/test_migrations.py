"""The llm app's migrations, run on their own against a database with nothing in it."""

import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.conftest import BASE_DIR, database_url_for, subprocess_env


@pytest.fixture
def empty_database_url(test_database_url):
    """A new, empty database on the test server; dropped afterwards."""
    name = f"kb_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(test_database_url, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_for(name)
    finally:
        with psycopg.connect(test_database_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrating_the_llm_app_alone_on_an_empty_database_creates_its_vector_table(empty_database_url):
    # The cache's embedding column needs pgvector; the llm app's first migration must bring it in by itself.
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "llm", "--verbosity", "0"],
        cwd=BASE_DIR,
        env=subprocess_env(empty_database_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_database_url) as database:
        applied = database.execute("SELECT name FROM django_migrations WHERE app = 'llm'").fetchall()
        column = database.execute(
            "SELECT udt_name FROM information_schema.columns "
            "WHERE table_name = 'llm_cachedanswer' AND column_name = 'embedding'"
        ).fetchone()
    assert ("0001_initial",) in applied
    assert column == ("vector",)
