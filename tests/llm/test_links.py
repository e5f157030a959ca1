"""Model links and named endpoints as the settings read them (kb/llm/links.py): mixed providers, the
KB_ENDPOINTS syntax, and a bad value refused at start-up in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kb.llm.links import Endpoint, LinkError, chain_check, endpoints_parse
from tests.conftest import BASE_DIR

ENDPOINTS = {"selfhosted": Endpoint("selfhosted", "http://10.0.0.5:8000/v1", internal=True)}


def keys(*present: str):
    return lambda variable: variable in present


def test_endpoints_parse_names_urls_keys_and_where_they_run():
    parsed = endpoints_parse(
        "selfhosted=http://10.0.0.5:8000/v1;internal;key_env=VLLM_API_KEY, azure=https://x.openai.azure.com/openai/v1/"
    )
    assert parsed == {
        "selfhosted": Endpoint("selfhosted", "http://10.0.0.5:8000/v1", internal=True, key_env="VLLM_API_KEY"),
        "azure": Endpoint("azure", "https://x.openai.azure.com/openai/v1", internal=False),
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("selfhosted", "no http(s) base URL"),
        ("selfhosted=ftp://host/v1", "no http(s) base URL"),
        ("Self Hosted=http://h/v1", "bad name"),
        ("openai=http://h/v1", "that name is a provider's"),
        ("a=http://h/v1,a=http://g/v1", "names 'a' twice"),
        ("a=http://h/v1;inside", "unknown option 'inside'"),
        ("a=http://h/v1;key_env=", "unknown option"),
        ("a=http://h/v1,", "empty item"),
    ],
)
def test_a_malformed_endpoint_is_refused_with_the_form(value, expected):
    with pytest.raises(LinkError, match=re.escape(expected)):
        endpoints_parse(value)


def test_a_chain_may_mix_providers_and_gets_extractive_last():
    links = ["anthropic:claude-sonnet-5-5", "openai:gpt-4.1", "selfhosted:llama-3.1-70b"]
    checked = chain_check("KB_MODELS", links, endpoints=ENDPOINTS, has_key=keys("ANTHROPIC_API_KEY", "OPENAI_API_KEY"))
    assert checked == [*links, "extractive"]


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        (["openai:gpt-4.1"], "OPENAI_API_KEY is not set"),
        (["anthropic:claude-haiku-5-5"], "ANTHROPIC_API_KEY is not set"),
        (["ollama:llama3"], "unknown link 'ollama:llama3'"),
        (["selfhosted"], "unknown link 'selfhosted'"),
        (["selfhosted:a", "selfhosted:a"], "names a link twice"),
        (["extractive", "selfhosted:a"], "links after extractive"),
    ],
)
def test_a_bad_chain_is_refused(links, expected):
    with pytest.raises(LinkError, match=re.escape(expected)):
        chain_check("KB_MODELS", links, endpoints=ENDPOINTS, has_key=keys())


def test_an_endpoint_whose_key_variable_is_unset_is_refused():
    endpoints = {"vllm": Endpoint("vllm", "http://h/v1", key_env="VLLM_API_KEY")}
    with pytest.raises(LinkError, match="VLLM_API_KEY"):
        chain_check("KB_MODELS", ["vllm:m"], endpoints=endpoints, has_key=keys())
    assert chain_check("KB_MODELS", ["vllm:m"], endpoints=endpoints, has_key=keys("VLLM_API_KEY"))


def test_a_bad_endpoint_stops_start_up_with_one_line(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kb.settings",
        "KB_DATA_DIR": str(tmp_path),
        "KB_ENDPOINTS": "gpu=http://10.0.0.5:8000/v1;internal",
        "KB_MODELS": "gpu:llama-3.1-70b,ollama:llama3",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "KB_MODELS has an unknown link 'ollama:llama3'" in lines[0], result.stderr
