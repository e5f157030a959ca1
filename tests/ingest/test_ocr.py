"""OCR (issue #18): scanned PDF pages and uploaded images are read by Tesseract, with page numbers, a per-page
report, and a clear failure for every file OCR cannot read. Every input is made here: pages drawn with PIL,
saved as PNG, JPEG, TIFF or a PDF of images (what a scanner writes), mixed with born-digital pages."""

from __future__ import annotations

import io

import pytest
from django.core.files.base import ContentFile
from django.template.loader import render_to_string
from django.urls import reverse
from PIL import Image
from pypdf import PdfReader, PdfWriter

from ingest import services
from ingest.models import Document, DocumentStatus
from ingest.parsers import ParseError, parse, sniff_media_type
from ingest.parsers.common import JPEG, PDF, PNG, TABLE, TIFF
from ingest.parsers.ocr import ocr_report_of
from tests import ocr_scans
from tests.ingest import fixtures_build as build


def handbook_image(dpi: int = 200) -> Image.Image:
    return ocr_scans.render_pages(ocr_scans.handbook_page_lines(), dpi=dpi)[0].image


def scanned_pdf(*images: Image.Image) -> bytes:
    return ocr_scans.pdf_from_images(list(images) or [handbook_image()])


def parse_file(data: bytes, name: str):
    return parse(data, sniff_media_type(data, name))


def text_of(document, page: int) -> str:
    return "\n".join(block.text for block in document.blocks if block.page == page)


def test_a_scanned_pdf_page_is_read_with_its_table_and_page_number():
    document = parse_file(scanned_pdf(), "scan.pdf")
    report = ocr_report_of(document)
    assert report is not None and report.read_pages == [1] and not report.unreadable
    assert 0.85 < report.mean_confidence <= 1
    tables = [block for block in document.blocks if block.kind == TABLE]
    assert tables and "Oslo | 67 EUR | 210 EUR" in tables[0].text
    assert tables[0].text.startswith("City | Allowance | Hotel cap")
    assert all(block.page == 1 for block in document.blocks)
    assert "Meal allowances per day" in tables[0].heading_path


def test_only_pages_without_a_text_layer_are_read_by_ocr_and_page_numbers_stay():
    text_page = build.build_pdf([["1. Scope", "", "This policy covers laptops and phones issued by the company."]])
    writer = PdfWriter()
    for data in (text_page, scanned_pdf(), text_page):
        for page in PdfReader(io.BytesIO(data)).pages:
            writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    document = parse_file(out.getvalue(), "mixed.pdf")
    report = ocr_report_of(document)
    assert report.read_pages == [2]
    assert "laptops and phones" in text_of(document, 1) and "laptops and phones" in text_of(document, 3)
    assert "Warsaw | 31 EUR | 110 EUR" in text_of(document, 2)
    assert document.page_count == 3


def test_a_born_digital_pdf_is_not_read_by_ocr():
    document = parse_file(build.policy_pdf(), "policy.pdf")
    assert ocr_report_of(document) is None


@pytest.mark.parametrize(
    ("name", "fmt", "media_type"),
    [("scan.png", "PNG", PNG), ("photo.jpg", "JPEG", JPEG), ("scan.tiff", "TIFF", TIFF)],
)
def test_images_are_read_by_ocr(name, fmt, media_type):
    data = ocr_scans.image_bytes(ocr_scans.degrade(handbook_image()), fmt)
    assert sniff_media_type(data, name) == media_type
    document = parse(data, media_type)
    assert "Lisbon | 38 EUR | 140 EUR" in document.text
    assert ocr_report_of(document).read_pages == [1]


def test_a_tiff_whose_later_page_is_huge_or_damaged_fails_clearly():
    small, huge = Image.new("1", (100, 100), 1), Image.new("1", (14000, 14000), 1)  # 196 megapixels, 1 bit each
    out = io.BytesIO()
    small.save(out, "TIFF", save_all=True, append_images=[huge], compression="group4")
    with pytest.raises(ParseError) as raised:
        parse(out.getvalue(), TIFF)
    assert raised.value.code == "image_too_large" and "Page 2" in raised.value.message
    damaged = bytearray(out.getvalue())
    damaged[-60:] = b"\xff" * 60  # the second page's directory
    with pytest.raises(ParseError) as raised:
        parse(bytes(damaged), TIFF)
    assert raised.value.code in {"corrupt_image", "image_too_large", "ocr_unreadable"}


def test_a_multi_page_tiff_keeps_its_page_numbers():
    pages = ocr_scans.render_pages(
        [ocr_scans.Line("First page: the office opens at eight.")] * 3
        + [ocr_scans.Line("")] * 60
        + [ocr_scans.Line("Second page: the office closes at six.")],
        dpi=150,
    )
    assert len(pages) == 2
    out = io.BytesIO()
    pages[0].image.save(out, "TIFF", save_all=True, append_images=[pages[1].image])
    document = parse_file(out.getvalue(), "two-pages.tif")
    assert "opens at eight" in text_of(document, 1)
    assert "closes at six" in text_of(document, 2)
    assert document.page_count == 2


def test_a_corrupt_image_fails_with_a_reason():
    data = ocr_scans.image_bytes(handbook_image(), "PNG")
    with pytest.raises(ParseError) as caught:
        parse_file(data[: len(data) // 2], "cut.png")
    assert caught.value.code == "corrupt_image"
    assert "damaged" in caught.value.message and "upload" in caught.value.message


def test_garbage_with_an_image_header_fails_as_corrupt():
    with pytest.raises(ParseError) as caught:
        parse_file(build.png_bytes(), "header-only.png")
    assert caught.value.code == "corrupt_image"


def test_an_empty_image_file_fails_as_empty():
    with pytest.raises(ParseError) as caught:
        parse_file(b"", "empty.png")
    assert caught.value.code == "empty"


def test_an_image_of_noise_is_reported_unreadable_not_empty():
    with pytest.raises(ParseError) as caught:
        parse_file(ocr_scans.image_bytes(ocr_scans.noise_image()), "noise.png")
    assert caught.value.code == "ocr_unreadable"
    assert "page 1: no legible text was found on it" in caught.value.message
    assert "300 dpi" in caught.value.message


def test_a_huge_image_is_refused_with_its_size_and_the_limit(settings):
    huge = Image.new("L", (9000, 5000), 255)  # 45 megapixels, above the 40 MP default
    data = ocr_scans.image_bytes(huge, "PNG")
    with pytest.raises(ParseError) as caught:
        parse_file(data, "poster.png")
    assert caught.value.code == "image_too_large"
    assert "9000×5000" in caught.value.message and "40-megapixel limit" in caught.value.message


def test_a_page_ocr_cannot_read_is_reported_and_the_others_kept():
    document = parse_file(scanned_pdf(handbook_image(), ocr_scans.noise_image()), "half.pdf")
    report = ocr_report_of(document)
    assert report.read_pages == [1]
    assert [(page.page, page.problem) for page in report.unreadable] == [(2, "no legible text was found on it")]
    assert "Oslo" in text_of(document, 1) and text_of(document, 2) == ""


def test_a_page_below_the_confidence_floor_is_reported(settings):
    settings.KB_OCR_MIN_CONFIDENCE = 0.995  # no real page reaches it
    with pytest.raises(ParseError) as caught:
        parse_file(scanned_pdf(), "scan.pdf")
    assert caught.value.code == "ocr_unreadable"
    assert "below the 100% needed" in caught.value.message or "below the 99% needed" in caught.value.message


def test_a_page_over_the_time_limit_is_stopped_and_reported(settings):
    settings.KB_OCR_PAGE_SECONDS = 0.05
    with pytest.raises(ParseError) as caught:
        parse_file(scanned_pdf(handbook_image(dpi=300)), "slow.pdf")
    assert caught.value.code == "ocr_unreadable"
    assert "longer than the 0.05 s limit per page" in caught.value.message


def test_without_tesseract_a_scan_fails_saying_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ParseError) as caught:
        parse_file(scanned_pdf(), "scan.pdf")
    assert caught.value.code == "ocr_unavailable"
    assert "tesseract-ocr" in caught.value.message and "make run" in caught.value.message


def test_a_blank_pdf_page_is_neither_read_nor_reported():
    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(scanned_pdf())).pages:
        writer.add_page(page)
    writer.add_blank_page(width=595, height=842)
    out = io.BytesIO()
    writer.write(out)
    report = ocr_report_of(parse_file(out.getvalue(), "with-blank.pdf"))
    assert [page.page for page in report.pages] == [1]


# --- through the worker's service: the document version records what OCR did ------------------------------


def ingest(data: bytes, name: str) -> Document:
    result = services.document_upload(source=ContentFile(data, name=name), filename=name)
    assert result.accepted, result.message
    services.document_process(result.document.pk)
    return Document.objects.get(pk=result.document.pk)


@pytest.mark.django_db
def test_a_scanned_pdf_becomes_ready_with_its_ocr_report_on_the_document_page(client, knowledge_admin):
    document = ingest(scanned_pdf(handbook_image(), ocr_scans.noise_image()), "allowances-scan.pdf")
    assert document.status == DocumentStatus.READY
    assert document.media_type == PDF
    assert [page["page"] for page in document.ocr_read] == [1]
    assert document.ocr_unreadable == [
        {"page": 2, "confidence": None, "chars": 0, "problem": "no legible text was found on it"}
    ]
    assert document.ocr_engine == "Tesseract 5" and document.ocr_confidence > 0.85
    assert (document.ocr_pages_done, document.ocr_pages_total) == (2, 2)
    chunk = document.chunks.get(text__contains="Oslo | 67 EUR")
    assert (chunk.page_start, chunk.page_end) == (1, 1)
    client.force_login(knowledge_admin)
    page = client.get(reverse("document_detail", args=[document.pk])).content.decode()
    assert "Read by OCR" in page and "page 1, mean confidence" in page
    assert "page 2: no legible text was found on it" in page
    api = client.get(f"/api/v1/documents/{document.pk}").json()
    assert [(p["page"], p["problem"]) for p in api["ocr_pages"]] == [(1, ""), (2, "no legible text was found on it")]
    assert api["ocr_confidence"] == pytest.approx(document.ocr_confidence)


@pytest.mark.django_db
def test_the_worker_reports_ocr_progress_page_by_page_with_a_heartbeat(monkeypatch):
    seen = []
    real = services._ocr_progress

    def spy(document_id, done, total):
        real(document_id, done, total)
        document = Document.objects.get(pk=document_id)
        seen.append((document.ocr_pages_done, document.ocr_pages_total, document.heartbeat_at))
        seen[-1] += (render_to_string("ingest/_status.html", {"document": document}),)

    monkeypatch.setattr(services, "_ocr_progress", spy)
    ingest(scanned_pdf(handbook_image(), handbook_image()), "two-scans.pdf")
    assert [(done, total) for done, total, _, _ in seen] == [(0, 2), (0, 2), (1, 2), (2, 2)]
    assert "reading page 2 of 2 by OCR" in seen[2][3] and "read 2 pages by OCR" in seen[3][3]
    assert seen[0][2] < seen[-1][2]  # each page renews the heartbeat


@pytest.mark.django_db
def test_an_unreadable_image_fails_with_its_reason_and_loses_nothing_else():
    good = ingest(scanned_pdf(), "allowances-scan.pdf")
    bad = ingest(ocr_scans.image_bytes(ocr_scans.noise_image()), "allowances-scan.png")
    assert bad.status == DocumentStatus.FAILED and bad.error_code == "ocr_unreadable"
    assert "no legible text" in bad.error_message
    good.refresh_from_db()
    assert good.status == DocumentStatus.READY and good.searchable and good.chunks.exists()


@pytest.mark.django_db
def test_a_failed_ocr_of_a_new_version_leaves_the_previous_version_serving():
    first = ingest(scanned_pdf(), "allowances.pdf")
    second = ingest(scanned_pdf(ocr_scans.noise_image()), "allowances.pdf")
    assert second.version == 2 and second.status == DocumentStatus.FAILED
    first.refresh_from_db()
    assert first.status == DocumentStatus.READY and first.searchable


def test_a_page_pdfium_cannot_load_is_reported_unread_and_the_rest_kept():
    """Found by the damaged-file property test: a page object damaged so that pypdf reads the file but pdfium
    cannot load the page. The page is reported as damaged; the text the other page holds is kept."""
    from pathlib import Path

    from ingest.parsers.pdf import DAMAGED_PAGE

    data = (Path(__file__).parent / "data" / "damaged_page.pdf").read_bytes()
    document = parse(data, PDF)
    report = ocr_report_of(document)
    assert [(page.page, page.problem) for page in report.unreadable] == [(1, DAMAGED_PAGE)]
    assert document.text.strip()
