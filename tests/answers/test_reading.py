"""The reader shows a document's chunks as continuous text: nothing twice, tables under their header."""

from __future__ import annotations

from types import SimpleNamespace

from ingest.chunker import chunk_document
from ingest.parsers import CSV, PLAIN, parse
from kb.answers.reading import reading_passages


def _chunks(doc):
    drafts = chunk_document(doc, target_tokens=60, max_tokens=80, overlap_tokens=24)
    assert len(drafts) > 3 and any(d.char_start > 0 and not doc.text.startswith(d.text) for d in drafts)
    return [
        SimpleNamespace(text=d.text, char_start=d.char_start, char_end=d.char_end, heading_path=list(d.heading_path))
        for d in drafts
    ]


def test_the_overlap_a_passage_repeats_is_shown_once():
    text = " ".join(f"Sentence number {n} states fact {n}." for n in range(80))
    doc = parse(text.encode(), PLAIN)
    shown = " ".join(passage["text"] for passage in reading_passages(_chunks(doc)))
    assert " ".join(shown.split()) == " ".join(doc.text.split())


def test_each_passage_of_a_table_shows_its_header_and_every_row_once():
    rows = ["Name,Team,Days"] + [f"Person {n},Team {n % 3},{20 + n % 7}" for n in range(60)]
    doc = parse("\n".join(rows).encode(), CSV)
    passages = reading_passages(_chunks(doc))
    assert all(p["text"].startswith("Name | Team | Days\n") for p in passages)
    body = [line for p in passages for line in p["text"].split("\n")[1:]]
    assert body == doc.text.split("\n")[1:]
