#!/usr/bin/env python3
"""Check golden.jsonl against the documents in docs/.

Standard library only. Usage: python3 check.py
Exits with status 0 if everything passes, 1 otherwise.
"""
import collections
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
GOLDEN = os.path.join(HERE, "golden.jsonl")

REQUIRED = ["id", "question", "answerable", "doc", "section", "answer",
            "must_include", "kind"]
KINDS = {"table", "lookup", "paraphrase", "colloquial", "typo", "procedure",
         "multi_doc", "followup", "near_miss", "unanswerable", "injection"}
UNANSWERABLE_KINDS = {"near_miss", "unanswerable", "injection"}


def norm(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def load_docs():
    docs = {}
    for name in os.listdir(DOCS):
        with open(os.path.join(DOCS, name), encoding="utf-8") as fh:
            docs[name] = norm(fh.read())
    return docs


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def main():
    docs = load_docs()
    errors = []
    seen = set()
    kinds = collections.Counter()
    n_unanswerable = 0
    total = 0

    with open(GOLDEN, encoding="utf-8") as fh:
        lines = fh.read().splitlines()

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            errors.append(f"line {lineno}: blank line")
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {lineno}: invalid JSON ({exc})")
            continue
        total += 1
        qid = q.get("id", f"<line {lineno}>")
        where = f"line {lineno} ({qid})"

        for field in REQUIRED:
            if field not in q:
                errors.append(f"{where}: missing field '{field}'")
        if any(f not in q for f in REQUIRED):
            continue

        if qid in seen:
            errors.append(f"{where}: duplicate id")
        kind = q["kind"]
        kinds[kind] += 1
        if kind not in KINDS:
            errors.append(f"{where}: unknown kind '{kind}'")
        if not isinstance(q["answerable"], bool):
            errors.append(f"{where}: 'answerable' must be true or false")
        if not isinstance(q["must_include"], list):
            errors.append(f"{where}: 'must_include' must be a list")
            continue
        if not str(q["question"]).strip():
            errors.append(f"{where}: empty question")

        # follow-ups must point at an earlier id
        if kind == "followup" and "follows" not in q:
            errors.append(f"{where}: followup without 'follows'")
        if "follows" in q and q["follows"] not in seen:
            errors.append(f"{where}: follows '{q['follows']}' which is not an earlier id")

        doc_names = as_list(q["doc"])
        if q["answerable"]:
            if kind in UNANSWERABLE_KINDS:
                errors.append(f"{where}: kind '{kind}' must be unanswerable")
            if not doc_names:
                errors.append(f"{where}: answerable question without doc")
            if not 1 <= len(q["must_include"]) <= 2:
                errors.append(f"{where}: answerable question needs 1-2 must_include")
            if kind == "multi_doc" and len(doc_names) < 2:
                errors.append(f"{where}: multi_doc needs at least two docs")
        else:
            n_unanswerable += 1
            if kind not in UNANSWERABLE_KINDS:
                errors.append(f"{where}: unanswerable question with kind '{kind}'")
            if q["must_include"]:
                errors.append(f"{where}: unanswerable question must have must_include []")
            if q["doc"] is not None:
                errors.append(f"{where}: unanswerable question must have doc null")

        missing_doc = False
        for name in doc_names:
            if name not in docs:
                errors.append(f"{where}: doc '{name}' not found in docs/")
                missing_doc = True
        if missing_doc:
            seen.add(qid)
            continue

        combined = " ".join(docs[n] for n in doc_names)
        for phrase in q["must_include"]:
            if norm(phrase) not in combined:
                errors.append(f"{where}: must_include {phrase!r} not found in {doc_names}")

        # section: each heading given must occur in the corresponding doc(s)
        for section in as_list(q["section"]):
            if norm(section) not in combined:
                errors.append(f"{where}: section {section!r} not found in {doc_names}")

        seen.add(qid)

    print(f"{total} questions checked")
    for kind in sorted(kinds):
        print(f"  {kind:13s} {kinds[kind]}")
    if total:
        print(f"  unanswerable share: {n_unanswerable}/{total} = {n_unanswerable / total:.0%}")

    if errors:
        print(f"\nFAILED with {len(errors)} error(s):")
        for err in errors:
            print("  - " + err)
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
