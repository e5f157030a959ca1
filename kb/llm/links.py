"""Model links and named endpoints as the settings spell them (pure parsing, no Django: settings.py uses it).

A link is one of:
- `anthropic:MODEL`   Claude through the official `anthropic` SDK (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL);
- `openai:MODEL`      OpenAI (or Azure OpenAI's v1 API, or a LiteLLM proxy) through the official `openai` SDK
                      (OPENAI_API_KEY, OPENAI_BASE_URL); outside the company's infrastructure;
- `NAME:MODEL`        an OpenAI-compatible server named in KB_ENDPOINTS (vLLM, Ollama, llama.cpp server...);
- `extractive`        the offline answerer, always last.

KB_ENDPOINTS names the servers, comma-separated, each `NAME=BASE_URL` followed by `;`-separated options:
    KB_ENDPOINTS="selfhosted=http://10.0.0.5:8000/v1;internal;key_env=VLLM_API_KEY, ollama=http://gpu1:11434/v1;internal"
- `internal`: the server runs on the company's own infrastructure, so it may receive passages of documents
  marked "internal models only". Without it an endpoint counts as outside (the safe default).
- `key_env=VAR`: the API key is read from the environment variable VAR (never written in KB_ENDPOINTS itself);
  without it no key is sent (vLLM and Ollama need none by default).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

EXTRACTIVE = "extractive"
RESERVED = frozenset({"anthropic", "openai", EXTRACTIVE})
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENDPOINTS_FORM = "use KB_ENDPOINTS=NAME=BASE_URL[;internal][;key_env=VAR], comma-separated"
LINK_FORM = "use anthropic:MODEL, openai:MODEL, ENDPOINT:MODEL (an endpoint named in KB_ENDPOINTS) or extractive"


class LinkError(ValueError):
    """A malformed link or endpoint; the message is one line for the operator."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str
    internal: bool = False
    key_env: str = ""


def endpoints_parse(value: str) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise LinkError(f"KB_ENDPOINTS has an empty item: {ENDPOINTS_FORM}")
        head, *options = [piece.strip() for piece in item.split(";")]
        name, _, url = head.partition("=")
        name, url = name.strip(), url.strip()
        if not _NAME.match(name):
            raise LinkError(f"KB_ENDPOINTS has a bad name {name!r} (use a-z, 0-9, - and _): {ENDPOINTS_FORM}")
        if name in RESERVED:
            raise LinkError(f"KB_ENDPOINTS cannot name an endpoint {name!r}: that name is a provider's; choose another")
        if name in endpoints:
            raise LinkError(f"KB_ENDPOINTS names {name!r} twice: name each endpoint once")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LinkError(f"KB_ENDPOINTS: {name} has no http(s) base URL ({url!r}): {ENDPOINTS_FORM}")
        internal, key_env = False, ""
        for option in options:
            if option == "internal":
                internal = True
            elif option.startswith("key_env=") and _ENV_NAME.match(option[len("key_env=") :]):
                key_env = option[len("key_env=") :]
            else:
                raise LinkError(f"KB_ENDPOINTS: {name} has an unknown option {option!r}: {ENDPOINTS_FORM}")
        endpoints[name] = Endpoint(name, url.rstrip("/"), internal, key_env)
    return endpoints


def chain_check(
    setting: str,
    links: list[str],
    *,
    endpoints: Mapping[str, Endpoint],
    has_key: Callable[[str], bool],
) -> list[str]:
    """The chain with `extractive` appended when missing; LinkError on an unknown link, a link named twice,
    links after `extractive`, or a provider whose key is not set. `has_key(variable)` says whether it is set."""
    for link in links:
        if link == EXTRACTIVE:
            continue
        kind, _, model = link.partition(":")
        if not model:
            raise LinkError(f"{setting} has an unknown link {link!r}: {LINK_FORM}")
        if kind == "anthropic" and not has_key("ANTHROPIC_API_KEY"):
            raise LinkError(f"{setting} names {link} but ANTHROPIC_API_KEY is not set: set the key or drop the link")
        if kind == "openai" and not has_key("OPENAI_API_KEY"):
            raise LinkError(f"{setting} names {link} but OPENAI_API_KEY is not set: set the key or drop the link")
        if kind not in RESERVED and kind not in endpoints:
            raise LinkError(f"{setting} has an unknown link {link!r}: {LINK_FORM}")
        endpoint = endpoints.get(kind)
        if endpoint is not None and endpoint.key_env and not has_key(endpoint.key_env):
            raise LinkError(
                f"{setting} names {link} but {endpoint.key_env} (the key_env of endpoint {kind}) is not set: set it"
            )
    if len(set(links)) != len(links):
        raise LinkError(f"{setting}={','.join(links)} names a link twice: name each once")
    if EXTRACTIVE not in links:
        return [*links, EXTRACTIVE]
    if links[-1] != EXTRACTIVE:
        raise LinkError(f"{setting} has links after extractive, which always answers: put extractive last")
    return list(links)


TIERS = ("fast", "strong")
ROUTES_FORM = "use KB_ROUTES=fast=LINK,LINK,...;strong=LINK,LINK,... (tiers fast and strong)"


def routes_parse(value: str, *, error: type[Exception] = LinkError) -> dict[str, list[str]]:
    """`fast=a,b;strong=c,d` as {tier: [links]} (unchecked links: settings check them as chains)."""
    routes: dict[str, list[str]] = {}
    if not value.strip():
        return routes
    for item in value.split(";"):
        tier, _, chain = item.strip().partition("=")
        tier = tier.strip()
        if tier not in TIERS:
            raise error(f"KB_ROUTES has an unknown tier {tier!r}: {ROUTES_FORM}")
        if tier in routes:
            raise error(f"KB_ROUTES names tier {tier} twice: {ROUTES_FORM}")
        links = [link.strip() for link in chain.split(",")]
        if not chain.strip() or any(not link for link in links):
            raise error(f"KB_ROUTES has an empty chain or link for {tier}: {ROUTES_FORM}")
        routes[tier] = links
    return routes
