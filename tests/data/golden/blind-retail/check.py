#!/usr/bin/env python3
"""Check golden.jsonl against docs/ (standard library only).

Checks: valid JSON per line, required fields and types, unique ids, known kinds,
each doc exists in docs/, each must_include string occurs in its doc(s)
(case-insensitive, whitespace-normalised; HTML tags stripped and entities
unescaped), `follows` ids exist earlier, unanswerable items have doc null and
must_include [].
"""
import html
import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
GOLDEN = os.path.join(HERE, "golden.jsonl")
REQUIRED = ["id", "question", "answerable", "doc", "section", "answer", "must_include", "kind"]
KINDS = {"table", "lookup", "paraphrase", "colloquial", "typo", "procedure", "multi_doc",
         "followup", "near_miss", "unanswerable", "injection"}
UNANSWERABLE_KINDS = {"near_miss", "unanswerable", "injection"}


def norm(s):
    return re.sub(r"\s+", " ", s).strip().lower()


def doc_text(name, cache={}):
    if name not in cache:
        with open(os.path.join(DOCS, name), encoding="utf-8") as f:
            raw = f.read()
        if name.endswith((".html", ".htm")):
            raw = re.sub(r"<[^>]+>", " ", raw)
            raw = html.unescape(raw)
        cache[name] = norm(raw)
    return cache[name]


def main():
    errors = []
    seen = []
    kinds = Counter()
    with open(GOLDEN, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        where = f"line {n}"
        if not line.strip():
            errors.append(f"{where}: blank line")
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(o, dict):
            errors.append(f"{where}: not an object")
            continue
        missing = [k for k in REQUIRED if k not in o]
        if missing:
            errors.append(f"{where}: missing fields {missing}")
            continue
        qid = o["id"]
        where = f"line {n} ({qid})"
        if qid in seen:
            errors.append(f"{where}: duplicate id")
        if not isinstance(o["question"], str) or not o["question"].strip():
            errors.append(f"{where}: empty question")
        if o["kind"] not in KINDS:
            errors.append(f"{where}: unknown kind {o['kind']!r}")
        kinds[o["kind"]] += 1
        if not isinstance(o["answerable"], bool):
            errors.append(f"{where}: answerable must be true/false")
        if not isinstance(o["must_include"], list) or not all(isinstance(x, str) for x in o["must_include"]):
            errors.append(f"{where}: must_include must be a list of strings")
            o["must_include"] = []
        if "follows" in o:
            if o["follows"] not in seen:
                errors.append(f"{where}: follows {o['follows']!r} which is not an earlier id")
        elif o["kind"] == "followup":
            errors.append(f"{where}: followup without 'follows'")
        docs = o["doc"]
        if o["answerable"]:
            if o["kind"] in UNANSWERABLE_KINDS:
                errors.append(f"{where}: kind {o['kind']} must be answerable=false")
            if docs is None:
                errors.append(f"{where}: answerable but doc is null")
                docs = []
            elif isinstance(docs, str):
                docs = [docs]
            if o["kind"] == "multi_doc" and len(docs) < 2:
                errors.append(f"{where}: multi_doc needs a list of 2+ docs")
            if not (1 <= len(o["must_include"]) <= 2):
                errors.append(f"{where}: answerable needs 1-2 must_include strings")
            ok_docs = []
            for d in docs:
                if not os.path.isfile(os.path.join(DOCS, d)):
                    errors.append(f"{where}: doc {d!r} not found in docs/")
                else:
                    ok_docs.append(d)
            for m in o["must_include"]:
                if not any(norm(m) in doc_text(d) for d in ok_docs):
                    errors.append(f"{where}: must_include {m!r} not found in {ok_docs}")
        else:
            if o["kind"] not in UNANSWERABLE_KINDS:
                errors.append(f"{where}: kind {o['kind']} should be answerable")
            if o["must_include"] != []:
                errors.append(f"{where}: unanswerable must have must_include []")
            if docs is not None:
                errors.append(f"{where}: unanswerable should have doc null")
        seen.append(qid)

    total = sum(kinds.values())
    unans = sum(kinds[k] for k in UNANSWERABLE_KINDS)
    print(f"{total} questions; kinds: {dict(sorted(kinds.items()))}")
    print(f"unanswerable share: {unans}/{total} = {unans / max(total, 1):.0%}")
    if errors:
        print(f"FAIL: {len(errors)} problem(s)")
        for e in errors:
            print("  - " + e)
        return 1
    print("OK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
