import os
import subprocess
import sys
from pathlib import Path

import pytest

from kb.env import EnvError, env_bool, env_choice, env_int, env_list, env_url

BASE_DIR = Path(__file__).resolve().parent.parent


def test_bool_accepts_the_usual_spellings(monkeypatch):
    for raw, expected in [("true", True), ("1", True), ("ON", True), ("no", False), ("0", False)]:
        monkeypatch.setenv("DEBUG", raw)
        assert env_bool("DEBUG", False) is expected


def test_bool_refuses_anything_else_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(EnvError, match=r"^DEBUG='maybe' is not a boolean: use one of true/false"):
        env_bool("DEBUG", False)


def test_int_checks_form_and_range(monkeypatch):
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(EnvError, match="PORT='eighty' is not an integer"):
        env_int("PORT", 8000)
    monkeypatch.setenv("PORT", "70000")
    with pytest.raises(EnvError, match="PORT=70000 is out of range"):
        env_int("PORT", 8000, minimum=1, maximum=65535)


def test_choice_accepts_any_case_and_refuses_other_values_naming_them(monkeypatch):
    choices = ("auto", "float32", "bfloat16")
    assert env_choice("KB_EMBEDDING_PRECISION", "auto", choices) == "auto"
    monkeypatch.setenv("KB_EMBEDDING_PRECISION", " BFloat16 ")
    assert env_choice("KB_EMBEDDING_PRECISION", "auto", choices) == "bfloat16"
    monkeypatch.setenv("KB_EMBEDDING_PRECISION", "fp16")
    with pytest.raises(
        EnvError, match=r"^KB_EMBEDDING_PRECISION='fp16' is not one of its values: use auto, float32 or bfloat16$"
    ):
        env_choice("KB_EMBEDDING_PRECISION", "auto", choices)


def test_list_refuses_empty_items(monkeypatch):
    monkeypatch.setenv("KB_MODELS", "anthropic:claude-haiku-4-5,,extractive")
    with pytest.raises(EnvError, match="KB_MODELS"):
        env_list("KB_MODELS", [])


@pytest.mark.parametrize(
    "url",
    ["mysql://u:p@h/db", "postgresql://u:p@host:notaport/db", "not a url", "postgresql//host/db"],
)
def test_url_refuses_malformed_database_urls_without_echoing_them(monkeypatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(EnvError) as info:
        env_url("DATABASE_URL", schemes=("postgres", "postgresql"), example="postgresql://USER:PASSWORD@HOST:5432/NAME")
    message = str(info.value)
    assert message.startswith("DATABASE_URL ")
    assert "postgresql://USER:PASSWORD@HOST:5432/NAME" in message
    assert ":p@" not in message  # a password in the URL is never printed


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        ("DATABASE_URL", "postgresql://kb:secret@db:port/kb", "DATABASE_URL is malformed"),
        ("KB_MAX_UPLOAD_MB", "0", "KB_MAX_UPLOAD_MB=0 is out of range"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path, variable, value, expected):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "kb.settings", "KB_DATA_DIR": str(tmp_path), variable: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "secret" not in result.stderr


def test_an_abandoned_exchange_sweep_shorter_than_the_longest_answer_is_refused(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kb.settings",
        "KB_DATA_DIR": str(tmp_path),
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "KB_ABANDONED_EXCHANGE_S": "120",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "KB_ABANDONED_EXCHANGE_S=120 is shorter than the longest an answer may take" in result.stderr
