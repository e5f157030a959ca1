"""Ingestion speed of the PowerPoint, Excel, CSV and e-mail formats: slides, rows or mails per second for parsing
and chunking alone, and end to end in one process (parse, chunk, embed with the real model, write the index).
The text is real English prose (SciFact abstracts) laid out as each format holds it. Results:
var/bench/formats.json."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile

from ingest import services
from ingest.models import Document, DocumentStatus
from ingest.parsers import CSV, EML, PPTX, XLSX, parse
from kb.search import embeddings

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

SCIFACT = Path(settings.BASE_DIR).parent / "shared" / "eval" / "scifact" / "corpus.jsonl"
OUT = Path(settings.BASE_DIR) / "var" / "bench" / "formats.json"
SLIDES = 60
XLSX_ROWS = 2_400
CSV_ROWS = 3_000
# The default KB_MAX_TABLE_ROWS: how long the largest accepted table (header included) takes to parse and chunk.
LIMIT_ROWS = 50_000
MAILS = 10
MODEL_SAMPLE = 128


def _abstracts(count: int) -> list[dict]:
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is missing: the benchmark reads real prose from ../shared/eval/scifact")
    rows = []
    with SCIFACT.open() as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["text"].split()) > 60:
                rows.append(row)
            if len(rows) == count:
                break
    return rows


def _sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(". ") if s.strip()]


def make_pptx(abstracts: list[dict]) -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for number, row in enumerate(abstracts[:SLIDES], 1):
        if number % 5 == 0:
            slide = deck.slides.add_slide(deck.slide_layouts[5])
            slide.shapes.title.text = row["title"][:80]
            table = slide.shapes.add_table(6, 3, Inches(0.5), Inches(1.5), Inches(9), Inches(4)).table
            for r in range(6):
                for c in range(3):
                    table.cell(r, c).text = ("Measure", "Group", "Value")[c] if r == 0 else f"{row['_id']}-{r}-{c}"
            continue
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = row["title"][:80]
        frame = slide.placeholders[1].text_frame
        sentences = _sentences(row["text"])[:6]
        frame.text = sentences[0]
        for sentence in sentences[1:]:
            frame.add_paragraph().text = sentence
        slide.notes_slide.notes_text_frame.text = " ".join(_sentences(row["text"])[6:9])
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def _table_rows(abstracts: list[dict], count: int) -> list[list[str | int | float]]:
    rows: list[list[str | int | float]] = []
    for n in range(count):
        row = abstracts[n % len(abstracts)]
        words = row["title"].split()
        rows.append([f"R{n:06}", " ".join(words[:6]), " ".join(words[6:12]), n % 97, round(n * 1.37, 2), "2025-10-01"])
    return rows


HEADER = ["Record", "Topic", "Detail", "Group", "Amount", "Date"]


def make_xlsx(abstracts: list[dict]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook(write_only=True)
    for sheet_number in range(3):
        sheet = workbook.create_sheet(f"Sheet {sheet_number + 1}")
        sheet.append(HEADER)
        for row in _table_rows(abstracts, XLSX_ROWS // 3):
            sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def make_csv(abstracts: list[dict], rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(_table_rows(abstracts, rows))
    return out.getvalue().encode()


def make_mails(abstracts: list[dict]) -> list[bytes]:
    mails = []
    for n, row in enumerate(abstracts[:MAILS]):
        message = EmailMessage()
        message["Subject"] = row["title"][:120]
        message["From"] = f"Researcher {n} <r{n}@example.com>"
        message["To"] = "Team <team@example.com>"
        message["Date"] = "Mon, 06 Oct 2025 09:30:00 +0200"
        message.set_content(f"Hello all,\n\n{row['text']}\n\nBest regards,\nResearcher {n}")
        mails.append(message.as_bytes())
    return mails


def _parse_rate(files: bytes | list[bytes], media_type: str, units: int, **limits: int) -> dict:
    files = files if isinstance(files, list) else [files]
    parse_s = chunk_s = 0.0
    passages = 0
    for data in files:
        started = time.perf_counter()
        parsed = parse(data, media_type, **limits)
        parsed_at = time.perf_counter()
        passages += len(services.chunks_of(parsed))
        parse_s += parsed_at - started
        chunk_s += time.perf_counter() - parsed_at
    return {
        "bytes": sum(len(data) for data in files),
        "units": units,
        "passages": passages,
        "parse_s": round(parse_s, 3),
        "chunk_s": round(chunk_s, 3),
        "units_per_s_parse_and_chunk": round(units / (parse_s + chunk_s), 1),
    }


def _end_to_end(files: list[tuple[str, bytes]], units: int) -> dict:
    started = time.perf_counter()
    passages = 0
    for name, data in files:
        result = services.document_upload(source=ContentFile(data, name=name), filename=name)
        assert result.accepted and result.document is not None, result.message
        services.document_process(result.document.pk)
        document = Document.objects.get(pk=result.document.pk)
        assert document.status == DocumentStatus.READY, document.error_message
        passages += document.chunks_total
    elapsed = time.perf_counter() - started
    return {
        "units": units,
        "passages": passages,
        "seconds": round(elapsed, 2),
        "units_per_s": round(units / elapsed, 1),
        "passages_per_s": round(passages / elapsed, 1),
    }


@pytest.mark.timeout(1800)
def test_ingestion_speed_of_each_new_format(settings, monkeypatch):
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: True)
    abstracts = _abstracts(400)
    pptx, xlsx, table = make_pptx(abstracts), make_xlsx(abstracts), make_csv(abstracts, CSV_ROWS)
    mails = make_mails(abstracts)
    makers: dict[str, Callable[[], dict]] = {
        "pptx (slides)": lambda: _parse_rate(pptx, PPTX, SLIDES),
        "xlsx (rows)": lambda: _parse_rate(xlsx, XLSX, XLSX_ROWS // 3 * 3),
        "csv (rows)": lambda: _parse_rate(table, CSV, CSV_ROWS),
        "eml (mails)": lambda: _parse_rate(mails, EML, MAILS),
        f"csv at the row limit, {LIMIT_ROWS:,} rows": lambda: _parse_rate(
            make_csv(abstracts, LIMIT_ROWS - 1), CSV, LIMIT_ROWS, max_table_rows=LIMIT_ROWS
        ),
    }
    parse_and_chunk = {name: make() for name, make in makers.items()}
    million = make_csv(abstracts, 1_000_000)
    started = time.perf_counter()
    with pytest.raises(Exception, match="KB_MAX_TABLE_ROWS"):
        parse(million, CSV, max_table_rows=LIMIT_ROWS)
    refusal = {"bytes": len(million), "seconds_to_refuse": round(time.perf_counter() - started, 2)}
    # The embedding model alone on passages of the same run, for scale: end to end is almost all embedding, so
    # rows or slides per second on a quieter machine are this rate's ratio to the model's there.
    sample = [
        services.indexed_text("table", draft.text, draft.heading_path)
        for draft in services.chunks_of(parse(table, CSV))[:MODEL_SAMPLE]
    ]
    embeddings.embed(["load the model before timing it"])
    started = time.perf_counter()
    embeddings.embed(sample)
    model_alone = {"passages": len(sample), "passages_per_s": round(len(sample) / (time.perf_counter() - started), 1)}
    end_to_end = {
        "pptx (slides)": _end_to_end([("deck.pptx", pptx)], SLIDES),
        "xlsx (rows)": _end_to_end([("sheet.xlsx", xlsx)], XLSX_ROWS // 3 * 3),
        "csv (rows)": _end_to_end([("table.csv", table)], CSV_ROWS),
        "eml (mails)": _end_to_end([(f"mail-{n}.eml", mail) for n, mail in enumerate(mails)], MAILS),
    }
    result = {
        "data": "SciFact abstracts (../shared/eval/scifact/corpus.jsonl) laid out as slides, rows and mails",
        "parse_and_chunk": parse_and_chunk,
        "million_row_csv_refused": refusal,
        "embedding_model_alone_same_run": model_alone,
        "end_to_end_one_process": end_to_end,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert refusal["seconds_to_refuse"] < 30
    assert all(figures["units_per_s"] > 0 for figures in end_to_end.values())
