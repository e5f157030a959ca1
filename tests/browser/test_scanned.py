"""A knowledge admin uploads a scanned handbook (a PDF of page images, no text layer) in the browser; the worker
reads it by OCR with the usual live progress; the document page says which pages OCR read and how confidently;
an employee then asks about a value in the scan's table and gets it, cited to the page the table is on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests import ocr_scans
from tests.browser.test_ask import ask
from tests.browser.test_documents import sign_in

SCREENSHOT = Path(settings.BASE_DIR) / "var" / "screenshots" / "scanned-document.png"
pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

INTRO = [
    ocr_scans.Line("Employee Handbook", bold=True, points=16),
    ocr_scans.Line(""),
    ocr_scans.Line(
        "Welcome to the company. This handbook explains how we work together: office hours, holidays and what "
        "the company pays for when you travel. Ask your manager when something is not covered here."
    ),
    ocr_scans.Line(""),
    ocr_scans.Line("Office hours", bold=True, points=13),
    ocr_scans.Line("The offices open at eight in the morning and close at six in the evening on working days."),
    ocr_scans.Line(
        "Reception is staffed from half past eight until five. Outside these hours, use your badge at the side "
        "entrance; visitors must be collected at reception by the person they visit and signed out when they "
        "leave. The building is closed on public holidays and between Christmas and New Year."
    ),
    ocr_scans.Line(""),
    ocr_scans.Line("Working from home", bold=True, points=13),
    ocr_scans.Line(
        "Employees may work from home up to three days a week when their role allows it and their manager "
        "agrees. Keep your calendar up to date so that colleagues know where to find you, and be reachable by "
        "phone and chat during core hours, from ten until four. Equipment for a home office, such as a second "
        "screen or a chair, can be borrowed from the facilities team for as long as you need it."
    ),
    ocr_scans.Line(""),
    ocr_scans.Line("Holidays", bold=True, points=13),
    ocr_scans.Line(
        "Full-time employees have twenty-six days of paid holiday a year. Request holidays in the HR portal at "
        "least two weeks ahead; your manager answers within five working days. Up to five unused days can be "
        "carried over to the first quarter of the next year; the rest expire on the last day of the year."
    ),
]


@pytest.fixture
def scanned_handbook(tmp_path):
    pages = [
        ocr_scans.degrade(ocr_scans.render_pages(lines, dpi=200)[0].image, seed=seed)
        for seed, lines in enumerate((INTRO, ocr_scans.handbook_page_lines()))
    ]
    path = tmp_path / "handbook-scan.pdf"
    path.write_bytes(ocr_scans.pdf_from_images(pages))
    return path


def test_a_scanned_handbook_is_read_by_ocr_and_answers_from_its_table_with_the_page(
    asgi_server, celery_worker, page, knowledge_admin, employee, scanned_handbook
):
    app = asgi_server(KB_MODELS="extractive")
    sign_in(page, app.url, knowledge_admin)
    page.goto(app.url + "/documents/")
    page.get_by_label("Upload documents").set_input_files(str(scanned_handbook))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("handbook-scan.pdf is queued for processing")
    row = page.get_by_role("row").filter(has_text="handbook-scan.pdf")
    expect(row.locator(".status")).to_have_text("Ready", timeout=120_000)

    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/documents/\d+/$"))
    report = page.locator("#ocr-report")
    expect(report).to_contain_text(re.compile(r"pages 1–2, mean confidence (8|9)\d%"))
    expect(page.locator("#ocr-unreadable")).to_have_count(0)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    table = page.locator("article.chunk").filter(has_text="Oslo")
    expect(table.locator("header")).to_contain_text("page 2")

    page.context.clear_cookies()
    sign_in(page, app.url, employee)
    ask(page, "What is the daily meal allowance in Oslo?")
    answer = page.locator(".exchange .answer").last
    expect(answer).to_contain_text("67 EUR", timeout=30_000)
    # The citation names the page the table is on, and opens the OCRed passage holding the row.
    answer.locator("a.cite").first.click()
    panel = page.get_by_role("complementary", name="Cited passage")
    expect(panel).to_contain_text("page 2")
    expect(panel).to_contain_text("handbook scan")
    # The OCRed table is shown as a table, and the quoted row is grounded in it (not "not supported").
    row = panel.locator("blockquote.passage tr").filter(has_text="Oslo")
    expect(row).to_contain_text("67 EUR")
    expect(row).to_contain_text("210 EUR")
    expect(answer).not_to_contain_text("not supported")
