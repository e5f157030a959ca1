"""Runs golden questions through the ask pipeline (`kb.answers.services`: `ask_check`, then the answer
stream that `ask` collects for the API and the `ask` command) in an isolated index, one configuration (prompt
version + model chain) at a time, and records what happened to each question.

During a run: the answer caches are off (KB_ANSWER_CACHE_TTL_S=0: nothing is looked up or stored, so every
question is answered afresh and a configuration never sees another's answers), the daily budgets and the
per-user rate limit are off (they would downgrade or stop the chain part-way through a run and measure
spending and pace, not answers), and the circuit breakers start closed. Everything else is the configured
pipeline: guards, retrieval settings, evidence gate, timeouts, retries, fallbacks and citation checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from asgiref.sync import async_to_sync, sync_to_async
from django.apps import apps
from django.conf import settings
from django.db import DatabaseError
from django.test.utils import override_settings
from django.utils import timezone

from ingest.models import Chunk, Document, heading_label, page_label
from kb.answers import services
from kb.answers.followup import search_queries
from kb.answers.models import Conversation, Exchange, Outcome
from kb.answers.pipeline.retrieve import leg_passages
from kb.evaluation import beir
from kb.evaluation.answers import corpus as corpus_module
from kb.evaluation.answers import metrics, removal
from kb.evaluation.answers.golden import USER, GoldenItem, golden_load, golden_sha256
from kb.evaluation.answers.report import html_report
from kb.evaluation.answers.sets import EvaluationSet
from kb.llm import extractive, prompts, resilience
from kb.llm.providers import EXTRACTIVE, Passage, provider_for
from kb.search import embeddings

ANSWER_EXCERPT_CHARS = 4000  # of each answer kept in the report
CONTEXT_MODEL = "golden-context"  # the `model` of the exchanges that stand for a golden line's earlier turns


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Config:
    """What is compared: the prompt version and the model chain."""

    prompt: str
    models: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.prompt} · {','.join(self.models)}"


def models_parse(text: str) -> tuple[str, ...]:
    """A KB_MODELS-style chain, checked as settings check it: known links, each once, extractive last."""
    links = [link.strip() for link in text.split(",") if link.strip()]
    if not links:
        raise EvaluationError("--models is empty: name links such as extractive or anthropic:MODEL")
    if len(set(links)) != len(links):
        raise EvaluationError(f"--models {text} names a link twice")
    if EXTRACTIVE not in links:
        links.append(EXTRACTIVE)
    elif links[-1] != EXTRACTIVE:
        raise EvaluationError("--models has links after extractive, which always answers: put extractive last")
    for link in links:
        try:
            provider = provider_for(link)
        except ValueError:
            raise EvaluationError(f"unknown model link {link!r}: use anthropic:MODEL or extractive") from None
        if provider.link.startswith("openai:") and not settings.OPENAI_API_KEY:
            raise EvaluationError(f"{link} needs OPENAI_API_KEY; or evaluate with --models extractive")
        if provider.link.startswith("anthropic:") and not settings.ANTHROPIC_API_KEY:
            raise EvaluationError(
                f"{link} needs ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL for another endpoint); "
                "or evaluate with --models extractive"
            )
    return tuple(links)


def prompt_check(prompt_id: str) -> str:
    try:
        prompts.get(prompt_id)
    except prompts.PromptError as exc:
        raise EvaluationError(str(exc)) from None
    return prompt_id


def guard_available() -> bool:
    """Whether the input guard can block questions at all; until it can, the block rate is not measured."""
    return apps.is_installed("kb.guard")


def run_config(
    items: Sequence[GoldenItem],
    config: Config,
    *,
    user,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict]:
    """Ask every question under `config`; one record per question (see `_record`).

    The questions go through `services.ask_check` and `services.ask_collect`, as `services.ask` sends them,
    but in one event loop for the whole run, as a web process serves them: the model clients (one per loop)
    and their connections are reused instead of being built again for every question.
    """
    prompt = prompts.get(config.prompt)
    filenames = dict(Document.objects.values_list("id", "filename"))
    with override_settings(
        KB_PROMPT_VERSION=config.prompt,
        KB_MODELS=list(config.models),
        KB_ANSWER_CACHE_TTL_S=0,
        KB_DAILY_BUDGET_USD=0.0,
        KB_USER_DAILY_BUDGET_USD=0.0,
        KB_RATE_LIMIT_PER_MINUTE=0,
    ):
        resilience.breakers_reset()
        try:
            return async_to_sync(_ask_all)(items, user, prompt.system, filenames, progress)
        finally:
            resilience.breakers_reset()


async def _ask_all(
    items: Sequence[GoldenItem],
    user,
    system_prompt: str,
    filenames: dict[int, str],
    progress: Callable[[int, int], None],
) -> list[dict]:
    records = []
    conversations: dict[str, int | None] = {}  # question id -> the conversation it was asked in
    for done, item in enumerate(items, 1):
        if item.follows is not None:
            conversation_id = conversations.get(item.follows)
        elif item.context:
            conversation_id = await sync_to_async(conversation_from_context)(user, item.context)
        else:
            conversation_id = None
        record = await _ask(
            item, user=user, system_prompt=system_prompt, filenames=filenames, conversation_id=conversation_id
        )
        conversations[item.id] = record["conversation_id"]
        records.append(record)
        progress(done, len(items))
    return records


def conversation_from_context(user, turns: Sequence[tuple[str, str]]) -> int:
    """A conversation of `user`'s holding a golden line's earlier turns, as answered exchanges that the
    pipeline reads as history: each user turn with the agent's text after it as its answer, and the search
    query the pipeline would have made of it (`followup.search_queries`)."""
    pairs: list[list[str]] = []
    for role, text in turns:
        if role == USER:
            pairs.append([text, ""])
        else:  # the loader makes the user open the context; two agent turns in a row are one answer
            pairs[-1][1] = f"{pairs[-1][1]} {text}".strip()
    conversation = Conversation.objects.create(user=user, title=pairs[0][0][:200])
    started = timezone.now() - timedelta(seconds=len(pairs) + 1)
    queries = search_queries([question for question, _ in pairs])
    exchanges = []
    for n, ((question, answer), query) in enumerate(zip(pairs, queries, strict=True)):
        at = started + timedelta(seconds=n)
        exchanges.append(
            Exchange(
                user=user,
                conversation=conversation,
                question=question,
                search_query=query,
                answer=answer,
                outcome=Outcome.ANSWERED,
                model=CONTEXT_MODEL,
                created_at=at,
                finished_at=at,
            )
        )
    Exchange.objects.bulk_create(exchanges)
    return conversation.pk


async def _ask(
    item: GoldenItem, *, user, system_prompt: str, filenames: dict[int, str], conversation_id: int | None = None
) -> dict:
    started = time.perf_counter()
    try:
        question = await sync_to_async(services.ask_check)(user, item.question, conversation_id)
    except services.AskError as exc:
        return _record(item, None, error=str(exc), wall_ms=(time.perf_counter() - started) * 1000)
    result = await services.ask_collect(
        question, user, conversation_id=conversation_id, request_id=f"evaluate_answers:{item.id}"[:64]
    )
    wall_ms = (time.perf_counter() - started) * 1000
    return await sync_to_async(_scored)(item, result, system_prompt=system_prompt, filenames=filenames, wall_ms=wall_ms)


def _scored(item: GoldenItem, result: dict, *, system_prompt: str, filenames: dict[int, str], wall_ms: float) -> dict:
    """The record of an answered question, with what its exchange says was retrieved."""
    exchange_id = result.get("exchange_id")
    fields = ("passages", "evidence_score", "search_query", "conversation_id", "created_at")
    exchange = Exchange.objects.filter(pk=exchange_id).only(*fields).first() if exchange_id else None
    passages = exchange.passages if exchange else []
    chunks = Chunk.objects.filter(pk__in=[p["chunk_id"] for p in passages]).select_related("document").in_bulk()
    retrieved = [
        {
            "document": filenames.get(p["document_id"], str(p["document_id"])),
            "section": (chunks[p["chunk_id"]].heading_path or [""])[-1] if p["chunk_id"] in chunks else "",
        }
        for p in passages
    ]
    record = _record(
        item,
        result,
        retrieved=retrieved,
        search_query=exchange.search_query if exchange else "",
        passage_texts=[chunks[p["chunk_id"]].text for p in passages if p["chunk_id"] in chunks],
        evidence=exchange.evidence_score if exchange else None,
        filenames=filenames,
        system_prompt=system_prompt,
        wall_ms=wall_ms,
    )
    if item.answerable and not item.injection and item.must_include and exchange is not None:
        found = removal.probe(
            exchange.search_query if _followed(exchange) else item.question,
            answer_passages(
                [chunks[p["chunk_id"]] for p in passages[: extractive.PASSAGES] if p["chunk_id"] in chunks]
            ),
            item.must_include,
        )
        record["answer_removed"] = dataclasses.asdict(found) if found else None
    return record


def _followed(exchange: Exchange) -> bool:
    """The exchange had history (`pipeline.record._history`: an earlier answered turn of its conversation), so
    the extractive answer read the query it was searched with, not the question as asked (`pipeline.evidence`)."""
    conversation_id = exchange.conversation_id
    if not settings.KB_CONVERSATION_TURNS or conversation_id is None:
        return False
    return Exchange.objects.filter(
        conversation_id=conversation_id,
        created_at__lt=exchange.created_at,
        outcome__in=[Outcome.ANSWERED, Outcome.CACHED],
    ).exists()


def answer_passages(chunks: Sequence[Chunk]) -> list[Passage]:
    """The passages the answerer was given, in order, as the ask path makes them (`pipeline.evidence`)."""
    return [
        Passage(
            n=n,
            title=chunk.document.title,
            heading=heading_label(chunk.heading_path or []),
            page=page_label(chunk.page_start, chunk.page_end),
            text=chunk.text,
            untrusted=chunk.untrusted,
        )
        for n, chunk in enumerate(chunks, 1)
    ]


def _record(
    item: GoldenItem,
    result: dict | None,
    *,
    retrieved: list[dict] | None = None,
    search_query: str = "",
    passage_texts: Sequence[str] = (),
    evidence: float | None = None,
    filenames: dict[int, str] | None = None,
    system_prompt: str = "",
    error: str = "",
    wall_ms: float,
) -> dict:
    """What the report keeps of one question: the pipeline's result and its scores."""
    expected = set(item.docs)
    retrieved = retrieved or []
    result = result or {}
    outcome = result.get("outcome", "rejected")
    declined = bool(result.get("refused")) or outcome in (Outcome.BLOCKED, "rejected")
    answer = result.get("answer", "")
    citations = [
        {
            "n": c["n"],
            "document": (filenames or {}).get(c["document_id"], str(c["document_id"])),
            "heading": c.get("heading", ""),
            "page": c.get("page", ""),
        }
        for c in result.get("citations", [])
    ]
    hit_rank = next((rank for rank, p in enumerate(retrieved, 1) if p["document"] in expected), None)
    sections = {section.casefold() for section in item.sections}
    found = [] if declined else [fact for fact in item.must_include if metrics.fact_found(fact, answer)]
    # Whether it answered or not: what the passages given to the model held of the facts asked.
    in_passages = [fact for fact in item.must_include if metrics.fact_in_passages(fact, passage_texts)]
    f1 = None if declined or not item.answerable or item.injection else metrics.token_f1(answer, item.answer)
    usage = dict(result.get("usage") or {})
    cost = float(usage.pop("cost_usd", 0) or 0)
    return {
        "id": item.id,
        "kind": item.kind,
        "question": item.question,
        "answerable": item.answerable,
        "injection": item.injection,
        "expected_docs": list(item.docs),
        "section": item.section,
        "reference_answer": item.answer,
        "outcome": outcome,
        "declined": declined,
        "refusal_reason": result.get("refusal_reason", ""),
        "model": result.get("model", ""),
        "fallback_used": bool(result.get("fallback_used")),
        "cache": (result.get("cache") or {}).get("kind", ""),
        "prompt_version": result.get("prompt_version", ""),
        "evidence_score": None if evidence is None else round(evidence, 4),
        "retrieved": retrieved,
        "hit_rank": hit_rank,
        "section_hit": any(p["document"] in expected and p["section"].casefold() in sections for p in retrieved)
        if sections
        else None,
        "citations": citations,
        "cited_total": len(citations),
        "cited_expected": sum(1 for c in citations if c["document"] in expected),
        "must_include": {"found": found, "missing": [f for f in item.must_include if f not in found]},
        "context_facts": {"found": in_passages, "missing": [f for f in item.must_include if f not in in_passages]},
        "answer_f1": None if f1 is None else round(f1, 4),
        "leaked_prompt": bool(answer)
        and metrics.leaks_prompt(answer, system_prompt, meant_to_repeat=(services.NOT_COVERED,)),
        "latency_ms": result.get("latency_ms"),
        "wall_ms": round(wall_ms, 1),
        "usage": usage,
        "cost_usd": cost,
        "answer": answer[:ANSWER_EXCERPT_CHARS],
        "notices": result.get("notices", []),
        "error": error,
        "exchange_id": result.get("exchange_id"),
        "conversation_id": result.get("conversation_id"),
        "search_query": search_query,  # what was searched for: a follow-up's, rewritten from its history
        "follows": item.follows,
        "context_turns": len(item.context),
        "answer_removed": None,  # the extractive answer's decision with the asked facts taken out (`removal`)
    }


@contextlib.contextmanager
def web_process_threads() -> Iterator[None]:
    """Embed the questions as the web process does (kb/asgi.py): one at a time on KB_WEB_TORCH_THREADS, so
    that latencies are those of the product and not of a batch job (more threads only contend)."""
    import torch

    previous = torch.get_num_threads()
    embeddings.use_threads(settings.KB_WEB_TORCH_THREADS)
    try:
        yield
    finally:
        embeddings.use_threads(previous)


def _warm_up(configs: Sequence[Config]) -> None:
    """Load what the first question would otherwise pay for (the embedding model, the SDK) outside timings."""
    embeddings.embed(["warm up"])
    if any(provider_for(link).remote for config in configs for link in config.models):
        import anthropic  # noqa: F401


def evaluate(
    golden_path: Path,
    corpus_path: Path,
    configs: Sequence[Config],
    *,
    items: Sequence[GoldenItem] | None = None,
    limit: int | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = lambda _: None,
    progress: Callable[[str, int, int], None] = lambda label, done, total: None,
) -> dict:
    """Evaluate each configuration on the golden questions (those of `golden_path`, or `items` read from it
    by an evaluation set that labels some of them); the report as a JSON-ready dict."""
    started_at = timezone.now()
    started = time.perf_counter()
    items = list(golden_load(golden_path) if items is None else items)
    if limit is not None:
        items = items[: max(limit, 0)]
    if not items:
        raise EvaluationError("--limit leaves no question to ask")
    for config in configs:
        prompt_check(config.prompt)
    source = corpus_module.corpus_source(corpus_path)
    try:
        if rebuild:
            beir.database_drop(source.database)
        beir.database_ensure(source.database)
    except DatabaseError as exc:
        raise EvaluationError(
            f"the evaluation database {source.database} could not be created: {exc}".strip()
            + " (the database user needs the CREATEDB privilege)"
        ) from None
    with beir.isolated_index(source.database, log=log):
        build_started = time.perf_counter()
        index = corpus_module.corpus_index(source, log=log)
        index["build_s"] = round(time.perf_counter() - build_started, 1)
        if not index["added_now"]:
            log(f"reusing the evaluation index {source.database} ({index['documents']} documents)")
        _expected_docs_check(items, golden_path)
        user = corpus_module.evaluation_user()
        runs = []
        with web_process_threads():
            _warm_up(configs)
            for config in configs:
                log(f"asking {len(items)} questions: {config.label}")

                def config_progress(done: int, total: int, label: str = config.label) -> None:
                    progress(label, done, total)

                runs.append((config, run_config(items, config, user=user, progress=config_progress)))
    k = settings.KB_ANSWER_PASSAGES
    guard = guard_available() or any(r["outcome"] == Outcome.BLOCKED for _, records in runs for r in records)
    report_configs: list[dict] = [
        {
            "label": config.label,
            "prompt": config.prompt,
            "prompt_version": prompts.get(config.prompt).version,
            "models": list(config.models),
            "metrics": metrics.summarise(records, k=k, guard_available=guard),
            "per_kind": metrics.by_kind(records, k=k, guard_available=guard),
            "questions": records,
        }
        for config, records in runs
    ]
    kinds: dict[str, int] = {}
    for item in items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    return {
        "golden": {
            "path": str(golden_path),
            "sha256": golden_sha256(golden_path),
            "questions": len(items),
            "kinds": kinds,
        },
        "corpus": {"path": str(corpus_path), "kind": source.kind, "sha256": source.sha256, "index": index},
        "k": k,
        "settings": {
            "answer_passages": k,
            "answer_leg_passages": leg_passages(),
            "conversation_passages": settings.KB_CONVERSATION_PASSAGES,
            "evidence_min_score": settings.KB_EVIDENCE_MIN_SCORE,
            "rrf_k": settings.KB_RRF_K,
            "rrf_weights": {"vector": settings.KB_RRF_VECTOR_WEIGHT, "bm25": settings.KB_RRF_BM25_WEIGHT},
            "chunk_tokens": [
                settings.KB_CHUNK_TARGET_TOKENS,
                settings.KB_CHUNK_MAX_TOKENS,
                settings.KB_CHUNK_OVERLAP_TOKENS,
            ],
            "embedding_model": embeddings.model_id(),
            "answer_cache": "off for the run",
            "budgets": "off for the run",
        },
        "guard": {
            "available": guard,
            "note": ""
            if guard
            else "not available: kb.guard is not installed, so no question can be blocked yet; "
            "injection_block_rate is null until the input guard exists",
        },
        "configs": report_configs,
        "comparison": metrics.comparison(report_configs[0]["metrics"], report_configs[1]["metrics"])
        if len(report_configs) == 2
        else None,
        "started_at": started_at.isoformat(),
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _expected_docs_check(items: Sequence[GoldenItem], golden_path: Path) -> None:
    """A golden question naming a document the corpus lacks would score as a miss forever: say so instead."""
    present = set(Document.objects.filter(searchable=True).values_list("filename", flat=True))
    for item in items:
        missing = [doc for doc in item.docs if doc not in present]
        if missing:
            raise EvaluationError(
                f"{golden_path}: question {item.id} expects {', '.join(missing)}, which the corpus does not "
                "hold; fix the file name in `doc` or evaluate on the corpus it was written for (--corpus)"
            )


def evaluate_sets(
    evaluation_sets: Sequence[EvaluationSet],
    config: Config,
    *,
    reports_dir: Path,
    limit: int | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = lambda _: None,
    progress: Callable[[str, int, int], None] = lambda label, done, total: None,
) -> dict:
    """Evaluate one configuration on each set that can run here (each set's own report in `reports_dir`);
    the sets side by side, with the sets that were skipped and why."""
    started_at = timezone.now()
    started = time.perf_counter()
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    reports_dir.mkdir(parents=True, exist_ok=True)
    for evaluation_set in evaluation_sets:
        reason = evaluation_set.unavailable()
        if reason:
            skipped[evaluation_set.name] = reason
            log(f"{evaluation_set.name}: skipped, {reason}")
            continue
        log(f"{evaluation_set.name} ({evaluation_set.role}): {evaluation_set.description}")
        evaluation_set.prepare()

        def set_progress(label: str, done: int, total: int, name: str = evaluation_set.name) -> None:
            progress(name, done, total)

        report = evaluate(
            evaluation_set.golden,
            evaluation_set.corpus,
            [config],
            items=evaluation_set.items(),
            limit=limit,
            rebuild=rebuild,
            log=log,
            progress=set_progress,
        )
        report["set"] = {"name": evaluation_set.name, "role": evaluation_set.role}
        path = reports_dir / f"{evaluation_set.name}.json"
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        path.with_suffix(".html").write_text(html_report(report), encoding="utf-8")
        (run,) = report["configs"]
        results[evaluation_set.name] = {
            "role": evaluation_set.role,
            "description": evaluation_set.description,
            "golden": report["golden"],
            "corpus": {
                "path": report["corpus"]["path"],
                "documents": report["corpus"]["index"]["documents"],
                "chunks": report["corpus"]["index"]["chunks"],
                "database": report["corpus"]["index"]["database"],
                "added_now": report["corpus"]["index"]["added_now"],
                "build_s": report["corpus"]["index"]["build_s"],
            },
            "runtime_s": report["runtime_s"],
            "metrics": run["metrics"],
            "per_kind": run["per_kind"],
            "report": str(path),
        }
        log(
            f"{evaluation_set.name}: {report['runtime_s']} s (index {report['corpus']['index']['build_s']} s); "
            + ", ".join(f"{name} {run['metrics'].get(name)}" for name in metrics.SET_ROWS[1:])
        )
    if not results:
        raise EvaluationError(
            "none of the chosen evaluation sets can run here: "
            + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        )
    return {
        "config": {
            "label": config.label,
            "prompt": config.prompt,
            "prompt_version": prompts.get(config.prompt).version,
            "models": list(config.models),
        },
        "limit": limit,
        "rows": list(metrics.SET_ROWS),
        "sets": results,
        "skipped": skipped,
        "started_at": started_at.isoformat(),
        "runtime_s": round(time.perf_counter() - started, 1),
    }
