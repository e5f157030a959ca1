#!/usr/bin/env python3
"""Validate golden.jsonl against the documents in docs/.

Standard library only. Run from any directory:

    python3 check.py

Checks:
  * every line is valid JSON with the required fields and types
  * ids are unique; kinds are known; counts per kind are reported
  * answerable items: doc exists, section is a heading in that doc,
    1-3 must_include strings, each found verbatim in the doc text
    (case-insensitive, whitespace-normalised, HTML tags stripped)
  * kind "table": every must_include string occurs within a single table
    cell, and does not also appear in the document's prose
  * kind "multi_doc": doc and section are parallel lists of 2+ entries
  * kind "followup": follows refers to an earlier, answerable id
  * unanswerable kinds (near_miss, unanswerable, injection): answerable is
    false, doc and section are null, must_include is []

For the CSV contacts directory, "section" is the value of the department
column of the row(s) holding the answer.
"""
import csv
import html
import io
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
GOLDEN = os.path.join(HERE, "golden.jsonl")

REQUIRED = ["id", "question", "answerable", "doc", "section", "answer",
            "must_include", "kind"]
KINDS = {
    "table": True, "lookup": True, "paraphrase": True, "colloquial": True,
    "typo": True, "procedure": True, "multi_doc": True, "followup": True,
    "near_miss": False, "unanswerable": False, "injection": False,
}
EXPECTED = {
    "table": 15, "lookup": 10, "paraphrase": 12, "colloquial": 15,
    "typo": 10, "procedure": 6, "multi_doc": 4, "followup": 7,
    "near_miss": 20, "unanswerable": 12, "injection": 6,
}


def norm(s):
    """Lower-case and collapse whitespace."""
    return re.sub(r"\s+", " ", s).strip().lower()


def norm_heading(s):
    return re.sub(r"\s+", " ", s).strip()


def strip_tags(s):
    s = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", s)
    s = re.sub(r"(?s)<[^>]+>", " ", s)
    return html.unescape(s)


def strip_md(s):
    return s.replace("**", "").replace("`", "")


class Doc:
    def __init__(self, path):
        self.name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        ext = self.name.rsplit(".", 1)[-1].lower()
        self.ext = ext
        self.cells = []
        self.headings = []
        if ext == "html":
            self.text = strip_tags(raw)
            prose = re.sub(r"(?is)<table\b.*?</table>", " ", raw)
            self.prose = strip_tags(prose)
            for c in re.findall(r"(?is)<t[dh]\b[^>]*>(.*?)</t[dh]>", raw):
                self.cells.append(strip_tags(c))
            for h in re.findall(r"(?is)<h[1-6]\b[^>]*>(.*?)</h[1-6]>", raw):
                self.headings.append(strip_tags(h))
        elif ext == "md":
            self.text = strip_md(raw)
            prose_lines = []
            for line in raw.splitlines():
                s = line.strip()
                if s.startswith("|"):
                    parts = [p.strip() for p in s.strip("|").split("|")]
                    if all(re.fullmatch(r":?-{2,}:?", p) for p in parts if p):
                        continue
                    self.cells.extend(strip_md(p) for p in parts)
                else:
                    prose_lines.append(line)
                m = re.match(r"^#{1,6}\s+(.*)$", s)
                if m:
                    self.headings.append(strip_md(m.group(1)).strip("* "))
            self.prose = strip_md("\n".join(prose_lines))
        elif ext == "csv":
            self.text = raw
            self.prose = ""
            rows = list(csv.reader(io.StringIO(raw)))
            for r in rows[1:]:
                self.cells.extend(r)
                if r:
                    self.headings.append(r[0])
            self.headings = sorted(set(self.headings))
        else:  # txt
            self.text = raw
            self.prose = raw
            for line in raw.splitlines():
                s = line.strip()
                if not s or len(s) > 90:
                    continue
                letters = re.sub(r"[^A-Za-z]", "", s)
                is_caps = letters and s.upper() == s and len(letters) >= 3
                is_numbered = (
                    re.match(r"^(\d+(\.\d+)*\.?|[A-Z]\d+)\s+\S", s)
                    and not s.endswith(".")
                    and not s.endswith(":")
                )
                if is_caps or is_numbered:
                    self.headings.append(s)
        self.ntext = norm(self.text)
        self.nprose = norm(self.prose)
        self.ncells = [norm(c) for c in self.cells]
        self.nheadings = {norm_heading(h) for h in self.headings}

    def contains(self, s):
        return norm(s) in self.ntext

    def in_cell(self, s):
        n = norm(s)
        return any(n in c for c in self.ncells)

    def in_prose(self, s):
        return norm(s) in self.nprose

    def has_heading(self, h):
        return norm_heading(h) in self.nheadings


def main():
    errors = []
    docs = {}
    for fn in sorted(os.listdir(DOCS)):
        if fn.rsplit(".", 1)[-1].lower() in ("md", "html", "txt", "csv"):
            docs[fn] = Doc(os.path.join(DOCS, fn))

    items = []
    with open(GOLDEN, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                errors.append(f"line {lineno}: blank line")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"line {lineno}: invalid JSON ({e})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"line {lineno}: not a JSON object")
                continue
            items.append((lineno, obj))

    seen = {}
    counts = {}
    for lineno, it in items:
        iid = it.get("id", f"<line {lineno}>")
        where = f"{iid} (line {lineno})"
        for k in REQUIRED:
            if k not in it:
                errors.append(f"{where}: missing field '{k}'")
        if any(k not in it for k in REQUIRED):
            continue
        if not isinstance(it["id"], str) or not it["id"]:
            errors.append(f"{where}: id must be a non-empty string")
        if iid in seen:
            errors.append(f"{where}: duplicate id (first on line {seen[iid][0]})")
        kind = it["kind"]
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in KINDS:
            errors.append(f"{where}: unknown kind '{kind}'")
            seen[iid] = (lineno, it)
            continue
        if not isinstance(it["question"], str) or not it["question"].strip():
            errors.append(f"{where}: question must be a non-empty string")
        if not isinstance(it["answer"], str) or not it["answer"].strip():
            errors.append(f"{where}: answer must be a non-empty string")
        if not isinstance(it["answerable"], bool):
            errors.append(f"{where}: answerable must be a boolean")
        if not isinstance(it["must_include"], list) or not all(
                isinstance(s, str) and s.strip() for s in it["must_include"]):
            errors.append(f"{where}: must_include must be a list of non-empty strings")
            seen[iid] = (lineno, it)
            continue

        expected_answerable = KINDS[kind]
        if it["answerable"] is not expected_answerable:
            errors.append(f"{where}: kind '{kind}' must have answerable={expected_answerable}")

        if kind == "followup":
            fol = it.get("follows")
            if not isinstance(fol, str) or not fol:
                errors.append(f"{where}: followup needs a 'follows' id")
            elif fol not in seen:
                errors.append(f"{where}: follows '{fol}', which is not an earlier id")
            elif not seen[fol][1].get("answerable"):
                errors.append(f"{where}: follows '{fol}', which is not answerable")
        elif "follows" in it:
            errors.append(f"{where}: 'follows' is only allowed on kind followup")

        if not expected_answerable:
            if it["doc"] is not None or it["section"] is not None:
                errors.append(f"{where}: unanswerable item must have doc and section null")
            if it["must_include"] != []:
                errors.append(f"{where}: unanswerable item must have must_include []")
            seen[iid] = (lineno, it)
            continue

        # answerable items
        mi = it["must_include"]
        if not 1 <= len(mi) <= 3:
            errors.append(f"{where}: must_include should have 1-3 strings, has {len(mi)}")
        if kind == "multi_doc":
            if not (isinstance(it["doc"], list) and isinstance(it["section"], list)):
                errors.append(f"{where}: multi_doc needs doc and section lists")
                seen[iid] = (lineno, it)
                continue
            if len(it["doc"]) < 2 or len(it["doc"]) != len(it["section"]):
                errors.append(f"{where}: multi_doc doc/section lists must be parallel, 2+ entries")
            doc_names, sections = it["doc"], it["section"]
        else:
            if not isinstance(it["doc"], str) or not isinstance(it["section"], str):
                errors.append(f"{where}: doc and section must be strings")
                seen[iid] = (lineno, it)
                continue
            doc_names, sections = [it["doc"]], [it["section"]]

        ok_docs = []
        for dn, sec in zip(doc_names, sections):
            if dn not in docs:
                errors.append(f"{where}: doc '{dn}' does not exist in docs/")
                continue
            d = docs[dn]
            ok_docs.append(d)
            if not isinstance(sec, str) or not d.has_heading(sec):
                errors.append(f"{where}: section '{sec}' is not a heading in {dn}")
        if len(ok_docs) != len(doc_names):
            seen[iid] = (lineno, it)
            continue
        for s in mi:
            if not any(d.contains(s) for d in ok_docs):
                errors.append(f"{where}: must_include '{s}' not found in {', '.join(doc_names)}")
            if kind == "table":
                d = ok_docs[0]
                if not d.in_cell(s):
                    errors.append(f"{where}: table item: '{s}' is not inside a single table cell of {d.name}")
                elif d.in_prose(s):
                    errors.append(f"{where}: table item: '{s}' is repeated in the prose of {d.name}")
        if kind == "multi_doc":
            for d in ok_docs:
                if not any(d.contains(s) for s in mi):
                    errors.append(f"{where}: no must_include string comes from {d.name}")
        seen[iid] = (lineno, it)

    # summary
    print(f"documents: {len(docs)}")
    by_ext = {}
    for d in docs.values():
        by_ext[d.ext] = by_ext.get(d.ext, 0) + 1
    print("  by format: " + ", ".join(f"{k} {v}" for k, v in sorted(by_ext.items())))
    ntables = 0
    for d in docs.values():
        if d.ext == "html":
            with open(os.path.join(DOCS, d.name), encoding="utf-8") as f:
                ntables += len(re.findall(r"(?i)<table\b", f.read()))
        elif d.ext == "md":
            with open(os.path.join(DOCS, d.name), encoding="utf-8") as f:
                ntables += len(re.findall(r"(?m)^\|[ :\-|]+\|\s*$", f.read()))
    print(f"  tables in md/html: {ntables}")
    print(f"questions: {len(items)}")
    for k in KINDS:
        n = counts.get(k, 0)
        flag = "" if n == EXPECTED[k] else f"  (expected {EXPECTED[k]})"
        print(f"  {k:13s} {n:3d}{flag}")
    for k in counts:
        if k not in KINDS:
            print(f"  {k:13s} {counts[k]:3d}  (unknown kind)")

    if errors:
        print(f"\nFAILED: {len(errors)} problem(s)")
        for e in errors:
            print("  - " + e)
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
