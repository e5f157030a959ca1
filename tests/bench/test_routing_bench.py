"""Routing before generation (issue #19, kb/answers/pipeline/route.py) on the golden sets: the share of questions
per tier, the share of the hard kinds (multi-document, comparison, procedure, follow-up) routed strong, the
estimated model cost against sending everything to the strong tier, and the router's own cost per question.

The small corpora (demo, blind-handbook, blind-clinic) are indexed here and each question is retrieved for, so
that the "passages span several documents" signal is real; the doc2dial sets (273 documents) are routed on the
question signals alone (documents spanned counted as 1), which the JSON says.

Cost: per question, input tokens ~ (system prompt + the retrieved passages) words x 1.3, output 150 tokens;
fast = FAST_LINK, strong = STRONG_LINK at the price table's list prices, no prompt caching.

Results: var/bench/routing.json. Run: pytest tests/bench/test_routing_bench.py -m bench -s
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import override_settings

from ingest import services as ingest_services
from ingest.models import Document
from ingest.parsers.sniff import SUPPORTED_EXTENSIONS
from kb.answers.pipeline.retrieve import leg_passages
from kb.answers.pipeline.route import STRONG, documents_spanned, tier_for
from kb.llm import prompts
from kb.llm.cost import link_price
from kb.search.retrieval import ReadScope, search_in_scope

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

BASE = Path(settings.BASE_DIR)
OUT = BASE / "var" / "bench" / "routing.json"
EVAL = BASE.parent / "shared" / "eval"
FAST_LINK, STRONG_LINK = "openai:gpt-4.1-mini", "anthropic:claude-sonnet-5-5"
OUTPUT_TOKENS = 150
TOKENS_PER_WORD = 1.3
HARD = {"multi_doc", "procedure", "followup", "follow-up", "comparison"}
GOLDEN = BASE / "tests" / "data" / "golden"
INDEXED = {
    "demo (dev)": (BASE / "ingest" / "demo", GOLDEN / "demo.jsonl"),
    "blind-handbook (dev)": (GOLDEN / "blind-handbook" / "docs", GOLDEN / "blind-handbook" / "golden.jsonl"),
    "blind-clinic (test)": (GOLDEN / "blind-clinic" / "docs", GOLDEN / "blind-clinic" / "golden.jsonl"),
    # Written after the routing rules, by a session that saw none of them: the blind figure.
    "blind-utility (test)": (GOLDEN / "blind-utility" / "docs", GOLDEN / "blind-utility" / "golden.jsonl"),
}
QUESTIONS_ONLY = {
    "doc2dial (dev)": EVAL / "doc2dial/golden-dev.jsonl",
    "doc2dial (test)": EVAL / "doc2dial/golden-test.jsonl",
    "doc2dial follow-ups (dev)": EVAL / "doc2dial/followup-dev.jsonl",
    "doc2dial follow-ups (test)": EVAL / "doc2dial/followup-test.jsonl",
}


def _ingest_folder(folder: Path) -> None:
    with mock.patch.object(ingest_services, "enqueue_processing", lambda document_id: True):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                continue
            upload = ingest_services.document_upload(
                source=ContentFile(path.read_bytes(), name=path.name), filename=path.name
            )
            assert upload.accepted, upload.message
            ingest_services.document_process(upload.document.pk)


def _is_follow_up(row: dict) -> bool:
    return row.get("kind") in ("followup", "follow-up") or bool(row.get("context"))


def _cost(tier: str, input_tokens: float) -> float:
    inp, out, _, _ = link_price(FAST_LINK if tier != STRONG else STRONG_LINK)
    return (input_tokens * inp + OUTPUT_TOKENS * out) / 1e6


def _summary(rows: list[tuple[dict, str, list[str], float, float]]) -> dict:
    tiers = Counter(tier for _, tier, _, _, _ in rows)
    hard = [(row, tier) for row, tier, _, _, _ in rows if row.get("kind") in HARD]
    routed = sum(_cost(tier, tokens) for _, tier, _, _, tokens in rows)
    all_strong = sum(_cost(STRONG, tokens) for _, _, _, _, tokens in rows)
    timings = sorted(ms for _, _, _, ms, _ in rows)
    why = Counter(reason.split(" (")[0] for _, _, reasons, _, _ in rows for reason in reasons)
    per_kind: dict[str, Counter] = defaultdict(Counter)
    for row, tier, _, _, _ in rows:
        per_kind[row.get("kind", "")][tier] += 1
    return {
        "questions": len(rows),
        "share": {tier: round(count / len(rows), 3) for tier, count in sorted(tiers.items())},
        "hard_questions": len(hard),
        "hard_routed_strong": round(sum(tier == STRONG for _, tier in hard) / len(hard), 3) if hard else None,
        "per_kind": {kind: dict(counts) for kind, counts in sorted(per_kind.items())},
        "why": dict(why.most_common()),
        "cost_usd_routed": round(routed, 4),
        "cost_usd_all_strong": round(all_strong, 4),
        "cost_saved": round(1 - routed / all_strong, 3) if all_strong else None,
        "router_ms_p50": round(statistics.median(timings), 4),
        "router_ms_p95": round(timings[int(0.95 * (len(timings) - 1))], 4),
    }


def _retrieve_all(golden: Path, system_words: int) -> list[tuple[dict, list, float]]:
    rows = [json.loads(line) for line in golden.read_text().splitlines() if line.strip()]
    scope = ReadScope.all_documents()
    found = []
    for row in rows:
        hits = search_in_scope(row["question"], scope, settings.KB_ANSWER_PASSAGES, legs_best=leg_passages()).hits
        words = system_words + sum(len(hit.text.split()) for hit in hits)
        found.append((row, hits, words * TOKENS_PER_WORD))
    return found


def _route(found: list[tuple[dict, list, float]]) -> list:
    routed = []
    for row, hits, tokens in found:
        started = time.perf_counter()
        tier, why = tier_for(row["question"], follow_up=_is_follow_up(row), documents=documents_spanned(hits))
        ms = (time.perf_counter() - started) * 1000
        routed.append((row, tier, list(why), ms, tokens))
    return routed


def _sweep(found: list[tuple[dict, list, float]]) -> dict:
    """Fast share and hard kinds routed strong for other values of the documents-spanned signal."""
    table = {}
    for rank in (0, 1, 2, 3, 5):  # 0: the signal off
        with override_settings(KB_ROUTE_AGREED_RANK=rank):
            result = _summary(_route(found))
        table[f"agreed rank {rank}"] = [result["share"].get("fast", 0.0), result["hard_routed_strong"]]
    return table


@pytest.mark.timeout(3600)
def test_routing_shares_hard_kinds_cost_and_router_time(capsys):
    system_words = len(prompts.get(settings.KB_PROMPT_VERSION).system.split())
    report: dict = {
        "fast_link": FAST_LINK,
        "strong_link": STRONG_LINK,
        "settings": {
            "KB_ROUTE_LONG_QUESTION_WORDS": settings.KB_ROUTE_LONG_QUESTION_WORDS,
            "KB_ROUTE_AGREED_RANK": settings.KB_ROUTE_AGREED_RANK,
        },
        "sets": {},
    }
    hits_dump: dict[str, list] = {}
    for name, (folder, golden) in INDEXED.items():
        if not golden.exists():
            continue
        Document.objects.all().delete()
        _ingest_folder(folder)
        found = _retrieve_all(golden, system_words)
        hits_dump[name] = [
            {"question": row["question"], "kind": row.get("kind"), "follow_up": _is_follow_up(row),
             "hits": [[h.document_id, h.fused_score, h.vector_similarity, h.vector_rank, h.bm25_rank, h.bm25_score]
                      for h in hits]}
            for row, hits, _ in found
        ]  # fmt: skip
        report["sets"][name] = {**_summary(_route(found)), "sweep_fast_share_and_hard_strong": _sweep(found)}
    for name, golden in QUESTIONS_ONLY.items():
        if not golden.exists():
            continue
        rows = [json.loads(line) for line in golden.read_text().splitlines() if line.strip()]
        routed = []
        for row in rows:
            started = time.perf_counter()
            tier, why = tier_for(row["question"], follow_up=_is_follow_up(row), documents=1)
            ms = (time.perf_counter() - started) * 1000
            routed.append((row, tier, list(why), ms, (system_words + 8 * 180) * TOKENS_PER_WORD))
        report["sets"][name] = {**_summary(routed), "documents_signal": "not measured (not indexed here)"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_name("routing-hits.json").write_text(json.dumps(hits_dump))  # for sweeping other signal rules
    OUT.write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        for name, result in report["sets"].items():
            print(
                f"[routing] {name}: {result['share']}, hard strong {result['hard_routed_strong']} "
                f"of {result['hard_questions']}, cost saved {result['cost_saved']}, "
                f"router p95 {result['router_ms_p95']} ms"
            )
    for name, result in report["sets"].items():
        assert result["router_ms_p95"] < 1.0, name  # goal: under 1 ms per question, no model call
