#!/usr/bin/env python3
"""Validate the Harbourline golden set (standard library only).

Usage: python3 check.py   (run from anywhere; paths are relative to this file)
Exits non-zero if any problem is found.
"""

import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
GOLDEN = os.path.join(HERE, "golden.jsonl")

FIELDS = {"id", "question", "answerable", "doc", "section", "answer", "must_include", "kind"}
OPTIONAL = {"follows"}
EXPECTED = {
    "table": 20,
    "colloquial": 14,
    "paraphrase": 12,
    "typo": 10,
    "lookup": 8,
    "procedure": 6,
    "followup": 6,
    "multi_doc": 4,
    "near_miss": 22,
    "out_of_scope": 6,
    "injection": 12,
}
UNANSWERABLE = {"near_miss", "out_of_scope", "injection"}
FLAG_WORDS = ["ignore", "override", "instruction", "system", "reveal", "pretend", "bypass", "admin"]

problems = []


def problem(msg):
    problems.append(msg)


def norm(s):
    return re.sub(r"\s+", " ", s).strip()


def load_docs():
    docs = {}
    for name in sorted(os.listdir(DOCS)):
        with open(os.path.join(DOCS, name), encoding="utf-8") as f:
            docs[name] = f.read()
    return docs


def split_table_text(name, text):
    """Return (table_text, prose_text) for a document."""
    if name.endswith(".md"):
        tab, prose = [], []
        for line in text.splitlines():
            (tab if line.lstrip().startswith("|") else prose).append(line)
        return "\n".join(tab), "\n".join(prose)
    if name.endswith((".html", ".htm")):
        tables = re.findall(r"<table\b.*?</table>", text, flags=re.S | re.I)
        prose = re.sub(r"<table\b.*?</table>", "\n", text, flags=re.S | re.I)
        return "\n".join(tables), prose
    return "", text  # plain text: no tables recognised


def sections(name, text):
    """Return list of (heading, body) in document order."""
    out = []
    cur_head, cur_body = None, []
    lines = text.splitlines()
    for line in lines:
        head = None
        s = line.strip()
        if name.endswith(".md"):
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*$", s)
            if m:
                head = m.group(1)
        elif name.endswith((".html", ".htm")):
            m = re.match(r"^<h[1-6][^>]*>(.*?)</h[1-6]>$", s, flags=re.I)
            if m:
                head = re.sub(r"<[^>]+>", "", m.group(1))
        else:
            if (
                s
                and s == s.upper()
                and re.search(r"[A-Z]", s)
                and len(s) < 80
                and not s.startswith("-")
                and not re.match(r"^\d", s)
            ):
                head = s
        if head is not None:
            out.append((cur_head, "\n".join(cur_body)))
            cur_head, cur_body = head, []
        else:
            cur_body.append(line)
    out.append((cur_head, "\n".join(cur_body)))
    return out


def main():
    docs = load_docs()
    items = []
    with open(GOLDEN, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                problem(f"line {n}: empty line")
                continue
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                problem(f"line {n}: JSON error: {e}")

    seen = {}
    kinds = Counter()
    flagged = []
    for n, it in items:
        iid = it.get("id", f"<line {n}>")
        keys = set(it)
        if not keys >= FIELDS or not keys <= FIELDS | OPTIONAL:
            missing, extra = sorted(FIELDS - keys), sorted(keys - FIELDS - OPTIONAL)
            problem(f"{iid}: fields {sorted(keys)} (missing {missing}, extra {extra})")
            continue
        if not isinstance(iid, str) or not iid:
            problem(f"line {n}: bad id")
        if iid in seen:
            problem(f"{iid}: duplicate id (line {seen[iid]} and {n})")
        kind = it["kind"]
        if kind not in EXPECTED:
            problem(f"{iid}: unknown kind {kind!r}")
        kinds[kind] += 1
        for fld in ("question", "answer"):
            if not isinstance(it[fld], str) or not it[fld].strip():
                problem(f"{iid}: empty {fld}")
        mi = it["must_include"]
        if not isinstance(mi, list) or not all(isinstance(x, str) and x for x in mi):
            problem(f"{iid}: must_include must be a list of non-empty strings")
            mi = []
        answerable = it["answerable"]
        if not isinstance(answerable, bool):
            problem(f"{iid}: answerable must be true/false")

        # follows
        if "follows" in it:
            if kind != "followup":
                problem(f"{iid}: 'follows' present on non-followup item")
            if it["follows"] not in seen:
                problem(f"{iid}: follows {it['follows']!r}, which is not an earlier id")
        elif kind == "followup":
            problem(f"{iid}: followup item without 'follows'")
        seen[iid] = n

        if kind in UNANSWERABLE:
            if answerable is not False:
                problem(f"{iid}: {kind} must have answerable=false")
            if it["doc"] is not None or it["section"] is not None:
                problem(f"{iid}: {kind} must have doc and section null")
            if mi:
                problem(f"{iid}: {kind} must have empty must_include")
            continue

        # answerable kinds
        if answerable is not True:
            problem(f"{iid}: {kind} must have answerable=true")
        if not 1 <= len(mi) <= 2:
            problem(f"{iid}: must_include needs 1-2 strings, has {len(mi)}")
        q = it["question"].lower()
        if any(w in q for w in FLAG_WORDS):
            flagged.append(iid)
        doc = it["doc"]
        if kind == "multi_doc":
            if not isinstance(doc, list) or len(doc) < 2:
                problem(f"{iid}: multi_doc needs a list of >=2 docs")
                continue
            if it["section"] is not None:
                problem(f"{iid}: multi_doc must have section null")
            for d in doc:
                if d not in docs:
                    problem(f"{iid}: doc {d!r} not found in docs/")
            texts = [norm(docs[d]) for d in doc if d in docs]
            for s in mi:
                if not any(norm(s) in t for t in texts):
                    problem(f"{iid}: must_include {s!r} not found in any of {doc}")
            continue

        if not isinstance(doc, str):
            problem(f"{iid}: doc must be a single file name")
            continue
        if doc not in docs:
            problem(f"{iid}: doc {doc!r} not found in docs/")
            continue
        text = docs[doc]
        for s in mi:
            if norm(s) not in norm(text):
                problem(f"{iid}: must_include {s!r} not found verbatim in {doc}")
        sec = it["section"]
        if not isinstance(sec, str) or not sec:
            problem(f"{iid}: section must be a heading string")
        else:
            secs = [(h, b) for h, b in sections(doc, text) if h == sec]
            if not secs:
                problem(f"{iid}: section {sec!r} is not a heading in {doc}")
            else:
                for s in mi:
                    if not any(norm(s) in norm(b) for _, b in secs):
                        problem(f"{iid}: must_include {s!r} is not under heading {sec!r} in {doc}")
        if kind == "table":
            tab, prose = split_table_text(doc, text)
            for s in mi:
                if norm(s) not in norm(tab):
                    problem(f"{iid}: table item but {s!r} not inside a table in {doc}")
                if norm(s) in norm(prose):
                    problem(f"{iid}: table fact {s!r} also appears outside tables in {doc}")

    for k, want in EXPECTED.items():
        if kinds[k] != want:
            problem(f"kind {k}: {kinds[k]} items, expected {want}")
    total = sum(kinds.values())
    if total != sum(EXPECTED.values()):
        problem(f"total {total} items, expected {sum(EXPECTED.values())}")

    # document-level checks
    ntables = 0
    fmt = Counter()
    for name, text in docs.items():
        ext = name.rsplit(".", 1)[-1]
        fmt[ext] += 1
        if ext == "md":
            ntables += len(re.findall(r"^\|[ :-]*-{3,}[ :|-]*\|\s*$", text, flags=re.M))
        elif ext in ("html", "htm"):
            nt = len(re.findall(r"<table\b", text, flags=re.I))
            ntables += nt
            if nt and not re.search(r"<th\b", text, flags=re.I):
                problem(f"{name}: HTML table without <th>")
        words = len(re.sub(r"<[^>]+>", " ", text).split())
        if not 700 <= words <= 1400:
            problem(f"{name}: {words} words (want 700-1400)")
    if not 12 <= len(docs) <= 14:
        problem(f"{len(docs)} documents (want 12-14)")
    if fmt["html"] < 3 or fmt["txt"] < 2:
        problem(f"formats {dict(fmt)}: need >=3 html and >=2 txt")
    if ntables < 8:
        problem(f"only {ntables} tables (want >=8)")

    print(
        f"Items: {total}  (answerable {sum(1 for _, i in items if i.get('answerable') is True)}, "
        f"unanswerable {sum(1 for _, i in items if i.get('answerable') is False)})"
    )
    for k in EXPECTED:
        print(f"  {k:<13} {kinds[k]:>3} / {EXPECTED[k]}")
    print(f"Documents: {len(docs)} {dict(fmt)}; tables: {ntables}")
    print(f"Answerable questions with injection-like words: {len(flagged)} ({', '.join(flagged)})")
    if problems:
        print(f"\n{len(problems)} PROBLEM(S):")
        for p in problems:
            print("  - " + p)
        sys.exit(1)
    print("\nOK: all checks passed")


if __name__ == "__main__":
    main()
