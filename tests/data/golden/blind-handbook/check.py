#!/usr/bin/env python3
"""Validate golden.jsonl against the documents in docs/.

Checks:
- every line parses as JSON and has exactly the eight fields
- ids are unique; field types are as specified
- every named document exists
- every must_include string occurs verbatim in the named document (for a list of
  documents: in at least one of them)
- the section (when given) is a heading of the named document
- items of kind "table": each must_include string occurs inside a table and
  nowhere in the document's prose
- unanswerable / injection items have doc=null, section=null, must_include=[]
Prints counts per kind at the end. Exit code 1 on any error.
"""

import collections
import html
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
FIELDS = ["id", "question", "answerable", "doc", "section", "answer", "must_include", "kind"]
KINDS = {"lookup", "paraphrase", "colloquial", "typo", "table", "multi_doc", "near_miss", "out_of_scope", "injection"}


def load(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def headings(name, text):
    if name.endswith(".md"):
        return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M)]
    if name.endswith(".html"):
        return [
            html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()
            for m in re.finditer(r"<h[1-6][^>]*>(.*?)</h[1-6]>", text, re.S)
        ]
    # plain text: a line followed by a line of dashes or equals signs
    lines = text.splitlines()
    return [
        lines[i].strip()
        for i in range(len(lines) - 1)
        if lines[i].strip() and re.fullmatch(r"[-=]{3,}", lines[i + 1].strip())
    ]


def prose_only(name, text):
    """Document text with all tables removed."""
    if name.endswith(".html"):
        return re.sub(r"<table.*?</table>", " ", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))


def main():
    errors = []
    kinds = collections.Counter()
    answerable = collections.Counter()
    seen = set()
    path = os.path.join(HERE, "golden.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {n}: invalid JSON: {e}")
            continue
        iid = item.get("id", f"line {n}")
        if sorted(item) != sorted(FIELDS):
            errors.append(f"{iid}: fields are {sorted(item)}")
            continue
        if iid in seen:
            errors.append(f"{iid}: duplicate id")
        seen.add(iid)
        kind = item["kind"]
        kinds[kind] += 1
        answerable[item["answerable"]] += 1
        if kind not in KINDS:
            errors.append(f"{iid}: unknown kind {kind}")
        if not isinstance(item["answerable"], bool):
            errors.append(f"{iid}: answerable is not a bool")
        if not isinstance(item["must_include"], list):
            errors.append(f"{iid}: must_include is not a list")
            continue
        if not item["question"].strip() or not item["answer"].strip():
            errors.append(f"{iid}: empty question or answer")
        if not item["answerable"]:
            if item["doc"] is not None or item["section"] is not None or item["must_include"]:
                errors.append(f"{iid}: unanswerable item must have doc=null, section=null, must_include=[]")
            if kind not in {"near_miss", "out_of_scope", "injection"}:
                errors.append(f"{iid}: unanswerable item has answerable kind {kind}")
            continue
        if kind in {"near_miss", "out_of_scope", "injection"}:
            errors.append(f"{iid}: answerable item has kind {kind}")
        docs = item["doc"] if isinstance(item["doc"], list) else [item["doc"]]
        if kind == "multi_doc" and (not isinstance(item["doc"], list) or len(docs) < 2):
            errors.append(f"{iid}: multi_doc item needs a list of at least two documents")
        texts = {}
        for d in docs:
            if not isinstance(d, str) or not os.path.exists(os.path.join(DOCS, d)):
                errors.append(f"{iid}: document not found: {d}")
            else:
                texts[d] = load(d)
        if not texts:
            continue
        if not 1 <= len(item["must_include"]) <= 2:
            errors.append(f"{iid}: must_include should have 1-2 strings")
        for s in item["must_include"]:
            if not any(s in t for t in texts.values()):
                errors.append(f"{iid}: must_include not found verbatim: {s!r}")
            if kind == "table":
                for d, t in texts.items():
                    if s in t and s in prose_only(d, t):
                        errors.append(f"{iid}: table fact {s!r} also occurs in prose of {d}")
        sec = item["section"]
        if sec is not None and not any(sec in headings(d, t) for d, t in texts.items()):
            errors.append(f"{iid}: section {sec!r} is not a heading of {docs}")
    for e in errors:
        print("ERROR", e)
    print(f"{len(lines)} items; answerable: {answerable[True]}, unanswerable: {answerable[False]}")
    for k in sorted(kinds):
        print(f"  {k}: {kinds[k]}")
    print("OK" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
