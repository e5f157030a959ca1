#!/usr/bin/env python3
"""Validate golden.jsonl against the documents in docs/ (standard library only).

Usage: python3 check.py [path/to/golden.jsonl]
Exit status 0 when every check passes, 1 otherwise.
"""

import html
import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
GOLDEN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "golden.jsonl")

REQUIRED = ["id", "question", "answerable", "doc", "section", "answer", "must_include", "kind"]
OPTIONAL = ["follows"]
KINDS = {
    "lookup",
    "table",
    "paraphrase",
    "colloquial",
    "typo",
    "procedure",
    "multi_doc",
    "followup",
    "near_miss",
    "out_of_scope",
    "injection",
}
UNANSWERABLE_KINDS = {"near_miss", "out_of_scope", "injection"}

errors = []


def err(lineno, msg):
    errors.append(f"line {lineno}: {msg}")


def norm_ws(s):
    return re.sub(r"\s+", " ", s).strip()


def load_doc(name):
    """Return (raw text, plain text, list of (heading, start, end) spans in plain text)."""
    path = os.path.join(DOCS, name)
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    headings = []  # (text, position in plain)
    if name.endswith(".html"):
        plain = raw
        # mark headings, then strip tags
        plain = re.sub(
            r"<h[1-6][^>]*>(.*?)</h[1-6]>",
            lambda m: "\n@@H@@" + re.sub(r"<[^>]+>", "", m.group(1)) + "@@/H@@\n",
            plain,
            flags=re.S | re.I,
        )
        plain = html.unescape(re.sub(r"<[^>]+>", " ", plain))
        out, pos = [], 0
        for m in re.finditer(r"@@H@@(.*?)@@/H@@", plain, flags=re.S):
            out.append(plain[pos : m.start()])
            headings.append((norm_ws(html.unescape(m.group(1))), sum(len(x) for x in out)))
            out.append(m.group(1))
            pos = m.end()
        out.append(plain[pos:])
        plain = "".join(out)
    elif name.endswith(".md"):
        plain = raw
        offset = 0
        for line in raw.splitlines(keepends=True):
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                headings.append((norm_ws(m.group(1)), offset))
            offset += len(line)
    else:  # .txt: a heading is a non-empty line underlined by ==== or ----
        plain = raw
        lines = raw.splitlines(keepends=True)
        offset = 0
        for i, line in enumerate(lines):
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if line.strip() and re.fullmatch(r"(=){3,}|(-){3,}", nxt):
                headings.append((norm_ws(line), offset))
            offset += len(line)
    spans = []
    for i, (text, start) in enumerate(headings):
        end = headings[i + 1][1] if i + 1 < len(headings) else len(plain)
        spans.append((text, start, end))
    return raw, plain, spans


doc_cache = {}


def get_doc(name):
    if name not in doc_cache:
        doc_cache[name] = load_doc(name)
    return doc_cache[name]


def occurs(s, name):
    raw, plain, _ = get_doc(name)
    return s in raw or s in plain or norm_ws(s) in norm_ws(plain)


def main():
    seen = []
    seen_set = set()
    kinds = Counter()
    if not os.path.exists(GOLDEN):
        print(f"missing {GOLDEN}")
        return 1
    with open(GOLDEN, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            err(n, "blank line")
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            err(n, f"invalid JSON: {e}")
            continue
        if not isinstance(q, dict):
            err(n, "not an object")
            continue
        keys = set(q)
        missing = [k for k in REQUIRED if k not in keys]
        extra = keys - set(REQUIRED) - set(OPTIONAL)
        if missing:
            err(n, f"missing fields {missing}")
            continue
        if extra:
            err(n, f"unexpected fields {sorted(extra)}")
        qid = q["id"]
        if not isinstance(qid, str) or not qid:
            err(n, "id must be a non-empty string")
        elif qid in seen_set:
            err(n, f"duplicate id {qid}")
        kind = q["kind"]
        if kind not in KINDS:
            err(n, f"{qid}: unknown kind {kind!r}")
        kinds[kind] += 1
        if not isinstance(q["question"], str) or not q["question"].strip():
            err(n, f"{qid}: empty question")
        if not isinstance(q["answer"], str) or not q["answer"].strip():
            err(n, f"{qid}: empty answer")
        if not isinstance(q["answerable"], bool):
            err(n, f"{qid}: answerable must be true/false")
        mi = q["must_include"]
        if not isinstance(mi, list) or not all(isinstance(s, str) and s for s in mi):
            err(n, f"{qid}: must_include must be a list of non-empty strings")
            mi = []
        # follows
        if "follows" in q and q["follows"] not in seen_set:
            err(n, f"{qid}: follows {q['follows']!r} is not an earlier id")
        if kind == "followup" and "follows" not in q:
            err(n, f"{qid}: followup item without follows")
        # doc
        doc = q["doc"]
        docs = []
        if doc is None:
            docs = []
        elif isinstance(doc, str):
            docs = [doc]
        elif isinstance(doc, list) and all(isinstance(d, str) for d in doc):
            docs = doc
        else:
            err(n, f"{qid}: doc must be a string, list of strings or null")
        for d in docs:
            if not os.path.isfile(os.path.join(DOCS, d)):
                err(n, f"{qid}: doc file not found: {d}")
        docs = [d for d in docs if os.path.isfile(os.path.join(DOCS, d))]
        # answerability rules
        unanswerable = kind in UNANSWERABLE_KINDS or q["answerable"] is False
        if kind in UNANSWERABLE_KINDS and q["answerable"] is not False:
            err(n, f"{qid}: kind {kind} must have answerable=false")
        if unanswerable:
            if mi:
                err(n, f"{qid}: unanswerable/injection item must have empty must_include")
            if q["section"] is not None:
                err(n, f"{qid}: unanswerable item must have section null")
        else:
            if not docs:
                err(n, f"{qid}: answerable item needs a doc")
            if not 1 <= len(mi) <= 2:
                err(n, f"{qid}: answerable item needs 1-2 must_include strings")
            for s in mi:
                if not any(occurs(s, d) for d in docs):
                    err(n, f"{qid}: must_include not found verbatim: {s!r}")
            if kind == "multi_doc" or isinstance(doc, list):
                if kind == "multi_doc" and len(docs) < 2:
                    err(n, f"{qid}: multi_doc item needs at least two docs")
                if q["section"] is not None:
                    err(n, f"{qid}: multi-document item must have section null")
            else:
                sec = q["section"]
                if not isinstance(sec, str):
                    err(n, f"{qid}: single-document answerable item needs a section")
                elif docs:
                    spans = get_doc(docs[0])[2]
                    match = [sp for sp in spans if sp[0] == norm_ws(sec)]
                    if not match:
                        err(n, f"{qid}: section {sec!r} is not a heading in {docs[0]}")
                    else:
                        plain = get_doc(docs[0])[1]
                        texts = [norm_ws(plain[a:b]) for _, a, b in match]
                        if not any(norm_ws(s) in t for s in mi for t in texts):
                            err(n, f"{qid}: no must_include string lies under section {sec!r}")
        if isinstance(qid, str):
            seen.append(qid)
            seen_set.add(qid)
    for e in errors:
        print("ERROR", e)
    total = sum(kinds.values())
    print(f"{total} items; per kind: " + ", ".join(f"{k}={kinds[k]}" for k in sorted(kinds)))
    if errors:
        print(f"FAILED with {len(errors)} error(s)")
        return 1
    print("OK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
