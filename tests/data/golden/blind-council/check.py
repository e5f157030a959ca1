#!/usr/bin/env python3
"""Validate golden.jsonl against the documents in docs/.

Standard library only. Usage:  python3 check.py  [path/to/golden.jsonl]
Exit code 0 when every check passes, 1 otherwise.

Checks
  * every line is valid JSON with the required fields and types
  * ids are unique; kinds are known; counts per kind are reported
  * answerable items: doc(s) exist, section heading(s) occur in the doc(s),
    1-3 must_include strings, each occurring verbatim (case-insensitive,
    whitespace-normalised, HTML tags stripped) in the doc(s) - and inside the
    text under the named section
  * kind "table": each must_include string occurs within a single table cell
    (Markdown pipe table, HTML <td>/<th>, or CSV cell) and nowhere outside
    the document's tables; kind "lookup": each string occurs in prose
  * kind "followup": "follows" names an earlier id of an answerable item
  * multi_doc: doc and section are parallel lists of at least two entries
  * near_miss / unanswerable / injection: answerable false, doc null,
    section null, must_include []
"""
import csv
import html
import io
import json
import os
import re
import sys
from html.parser import HTMLParser

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")

KINDS = {
    "table": True, "lookup": True, "paraphrase": True, "colloquial": True,
    "typo": True, "procedure": True, "multi_doc": True, "followup": True,
    "near_miss": False, "unanswerable": False, "injection": False,
}
REQUIRED = ["id", "question", "answerable", "doc", "section", "answer",
            "must_include", "kind"]


def norm(s):
    """Unescape entities, strip tags, collapse whitespace, lower-case."""
    s = html.unescape(re.sub(r"<[^>]+>", " ", s))
    return re.sub(r"\s+", " ", s).strip().lower()


# ---------------------------------------------------------------- parsing
class _HTMLDoc(HTMLParser):
    """Collects table cells and (heading, text) sections from simple HTML."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells, self.sections = [], []   # sections: [heading, text]
        self._cell = None
        self._head = None
        self._cur = ["", []]

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th"):
            self._cell = []
        if tag in ("h1", "h2", "h3"):
            self._head = []
        self._cur[1].append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None
        if tag in ("h1", "h2", "h3") and self._head is not None:
            self.sections.append(self._cur)
            self._cur = ["".join(self._head), []]
            self._head = None
        self._cur[1].append(" ")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._head is not None:
            self._head.append(data)
        else:
            self._cur[1].append(data)

    def close(self):
        super().close()
        self.sections.append(self._cur)


def _md_cells(text):
    cells = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and not re.fullmatch(r"\|[\s:\-|]+\|?", line):
            cells.extend(c for c in line.strip("|").split("|"))
    return cells


TXT_HEADING = re.compile(r"^([A-Z]?\d+\.\d+\.?|[A-Z]\d+\.)\s+\S")


def _is_txt_heading(line):
    s = line.strip()
    if not s:
        return False
    if any(ch.isalpha() for ch in s) and s == s.upper():
        return True
    return bool(TXT_HEADING.match(s))


def _split_sections(lines, is_heading, heading_text):
    sections, cur = [], ["", []]
    for line in lines:
        if is_heading(line):
            sections.append(cur)
            cur = [heading_text(line), []]
        else:
            cur[1].append(line)
    sections.append(cur)
    return sections


def load_doc(path):
    """Return dict(text, cells, sections={heading: text}, columns={col: [cells]})."""
    raw = open(path, encoding="utf-8").read()
    ext = os.path.splitext(path)[1].lower()
    cells, sections, columns = [], [], {}
    if ext == ".html":
        p = _HTMLDoc()
        p.feed(raw)
        p.close()
        cells = p.cells
        sections = [[h, "".join(t)] for h, t in p.sections]
    elif ext == ".md":
        cells = _md_cells(raw)
        sections = [[h, "\n".join(t)] for h, t in _split_sections(
            raw.splitlines(), lambda l: l.startswith("#"),
            lambda l: l.lstrip("#").strip())]
    elif ext == ".txt":
        sections = [[h, "\n".join(t)] for h, t in _split_sections(
            raw.splitlines(), _is_txt_heading, lambda l: l.strip())]
    elif ext == ".csv":
        rows = list(csv.reader(io.StringIO(raw)))
        header = rows[0]
        for row in rows:
            cells.extend(row)
        for i, col in enumerate(header):
            columns[col.strip()] = [r[i] for r in rows[1:] if i < len(r)]
        sections = [[c, "\n".join(v)] for c, v in columns.items()]
    sec = {}
    for h, t in sections:
        key = norm(h)
        sec[key] = sec.get(key, "") + " " + norm(t)
    if ext == ".md":
        prose = "\n".join(l for l in raw.splitlines() if not l.strip().startswith("|"))
    elif ext == ".html":
        prose = re.sub(r"<table\b.*?</table>", " ", raw, flags=re.S | re.I)
    elif ext == ".csv":
        prose = ""
    else:
        prose = raw
    return {"text": norm(raw), "cells": [norm(c) for c in cells], "prose": norm(prose),
            "sections": sec, "headings": {norm(h) for h, _ in sections if h}}


# ---------------------------------------------------------------- checking
def main(path):
    errors, cache = [], {}

    def doc(name):
        if name not in cache:
            cache[name] = load_doc(os.path.join(DOCS, name))
        return cache[name]

    items, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                o = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"line {n}: invalid JSON ({e})")
                continue
            items.append((n, o))

    for n, o in items:
        where = f"line {n} ({o.get('id', '?')})"
        missing = [k for k in REQUIRED if k not in o]
        if missing:
            errors.append(f"{where}: missing fields {missing}")
            continue
        i, kind = o["id"], o["kind"]
        if not isinstance(i, str) or not i:
            errors.append(f"{where}: id must be a non-empty string")
        if i in seen:
            errors.append(f"{where}: duplicate id (first on line {seen[i]})")
        if kind not in KINDS:
            errors.append(f"{where}: unknown kind {kind!r}")
            seen[i] = n
            continue
        if not isinstance(o["question"], str) or not o["question"].strip():
            errors.append(f"{where}: empty question")
        if not isinstance(o["answer"], str) or not o["answer"].strip():
            errors.append(f"{where}: empty answer")
        if not isinstance(o["must_include"], list):
            errors.append(f"{where}: must_include must be a list")
            seen[i] = n
            continue
        if o["answerable"] is not KINDS[kind]:
            errors.append(f"{where}: answerable should be {KINDS[kind]} for kind {kind}")

        if kind == "followup":
            f_id = o.get("follows")
            if f_id not in seen:
                errors.append(f"{where}: follows {f_id!r} is not an earlier id")
            else:
                prev = dict(items)[seen[f_id]]
                if not prev.get("answerable"):
                    errors.append(f"{where}: follows an unanswerable item")
        elif "follows" in o:
            errors.append(f"{where}: 'follows' only allowed on kind followup")
        seen[i] = n

        if not o["answerable"]:
            if o["doc"] is not None or o["section"] is not None or o["must_include"]:
                errors.append(f"{where}: unanswerable items need doc null, section null, must_include []")
            continue

        docs, secs = o["doc"], o["section"]
        if kind == "multi_doc":
            if not (isinstance(docs, list) and isinstance(secs, list)
                    and len(docs) == len(secs) >= 2 and len(set(docs)) == len(docs)):
                errors.append(f"{where}: multi_doc needs parallel lists of >=2 distinct docs and sections")
                continue
        else:
            if not isinstance(docs, str) or not isinstance(secs, str):
                errors.append(f"{where}: doc and section must be strings")
                continue
            docs, secs = [docs], [secs]

        ok_docs = True
        for d in docs:
            if not os.path.isfile(os.path.join(DOCS, d)):
                errors.append(f"{where}: doc {d!r} does not exist in docs/")
                ok_docs = False
        if not ok_docs:
            continue
        spans = []
        for d, s in zip(docs, secs):
            D = doc(d)
            if norm(s) not in D["headings"]:
                errors.append(f"{where}: section {s!r} is not a heading in {d}")
            spans.append(D["sections"].get(norm(s), ""))

        mi = o["must_include"]
        if not 1 <= len(mi) <= 3:
            errors.append(f"{where}: answerable items need 1-3 must_include strings")
        for m in mi:
            nm = norm(m)
            if not nm:
                errors.append(f"{where}: empty must_include string")
                continue
            if not any(nm in doc(d)["text"] for d in docs):
                errors.append(f"{where}: must_include {m!r} not found in {docs}")
                continue
            if not any(nm in sp for sp in spans):
                errors.append(f"{where}: must_include {m!r} not under section(s) {secs}")
            if kind == "table" and not any(nm in c for d in docs for c in doc(d)["cells"]):
                errors.append(f"{where}: must_include {m!r} is not inside a single table cell")
            if kind == "lookup" and not any(nm in doc(d)["prose"] for d in docs):
                errors.append(f"{where}: must_include {m!r} of a lookup item does not occur in prose")
            if kind == "table" and any(nm in doc(d)["prose"] for d in docs):
                errors.append(f"{where}: must_include {m!r} also occurs outside tables (table facts must not be repeated in prose)")

    counts = {}
    for _, o in items:
        counts[o.get("kind")] = counts.get(o.get("kind"), 0) + 1
    print(f"{len(items)} items in {os.path.basename(path)}")
    for k in KINDS:
        print(f"  {k:<13} {counts.get(k, 0)}")
    if errors:
        print(f"\nFAILED: {len(errors)} problem(s)")
        for e in errors:
            print("  - " + e)
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "golden.jsonl")))
