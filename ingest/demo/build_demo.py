# ruff: noqa: E501 - the policy text is prose, wrapped by the PDF writer, not by the editor
"""Writes the demo corpus's Word and PDF files from the text below (run by hand after editing it):

    .venv/bin/python ingest/demo/build_demo.py

The outputs are committed so that `make run` needs nothing but the files. The PDF is written by the
same minimal generator the tests use (text only, standard font, real page structure and bookmarks).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import docx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.ingest.fixtures_build import OutlineItem, build_pdf  # noqa: E402

LINES_PER_PAGE = 46
LINE_WIDTH = 88

TRAVEL: list[tuple[str, Any]] = [
    ("title", "Travel and Expenses Policy"),
    (
        "p",
        "This policy applies to every employee of Northwind Logistics who travels for work. It explains how to "
        "book travel, what the company pays for and how to claim expenses. Finance owns this policy.",
    ),
    ("h1", "Booking travel"),
    (
        "p",
        "Book all business travel through the travel desk at travel@northwind.example or in the travel portal. "
        "Trips need approval from your manager before you book.",
    ),
    ("bullet", "Trains are the default for journeys under 700 kilometres."),
    ("bullet", "Flights must be booked at least 14 days before departure unless the trip is urgent."),
    ("bullet", "Economy class is the default; business class is allowed for flights longer than 6 hours."),
    ("h2", "Hotels"),
    (
        "p",
        "Hotels are booked by the travel desk. The nightly limit is 150 euros in the Netherlands and 200 euros "
        "in other countries, including breakfast. Stays above the limit need approval from Finance.",
    ),
    ("h1", "Daily allowances"),
    (
        "p",
        "For each full day of travel abroad you receive a daily allowance for meals and small costs. The "
        "allowance replaces meal receipts: do not claim meals separately on days you receive it.",
    ),
    (
        "table",
        [
            ("Destination", "Daily allowance"),
            ("Netherlands", "none (claim meals up to 25 euros)"),
            ("Europe", "45 euros"),
            ("Outside Europe", "60 euros"),
        ],
    ),
    ("h1", "Claiming expenses"),
    (
        "p",
        "Submit expense claims in the expense app within 30 days of the cost, with a photo of every receipt. "
        "Claims are paid with the next monthly salary. Claims submitted after 90 days are not reimbursed.",
    ),
    ("h2", "Mileage"),
    (
        "p",
        "If you use your own car for business trips, you are reimbursed 0.23 euros per kilometre. Commuting "
        "between home and your usual office is not business travel.",
    ),
    ("h2", "What is not reimbursed"),
    ("bullet", "Traffic and parking fines."),
    ("bullet", "Alcohol, unless approved in advance for a client event."),
    ("bullet", "Upgrades of seats or rooms paid for privately."),
]

SECURITY_SECTIONS = [
    (
        "1 Purpose",
        [
            "This policy protects the information of Northwind Logistics, our customers and our employees. It applies to "
            "everyone who uses a company device or account, including contractors. The Chief Information Security Officer "
            "owns this policy and reviews it every year.",
        ],
    ),
    (
        "2 Passwords and sign-in",
        [
            "Passwords must be at least 14 characters long. Use a passphrase of several words and never reuse a company "
            "password anywhere else. Store passwords only in the company password manager.",
            "Multi-factor authentication is required for e-mail, the VPN and every application that holds customer data. "
            "Use the authenticator app on your company phone; text messages are not accepted as a second factor.",
            "Passwords are not changed on a schedule; change yours at once if you suspect someone else knows it.",
        ],
    ),
    (
        "3 Devices",
        [
            "Company laptops are encrypted and managed by IT. Do not disable the disk encryption, the firewall or the "
            "endpoint protection. Lock your screen when you leave your desk; laptops lock themselves after 5 minutes.",
            "Private devices may be used for e-mail and chat only after they are enrolled in device management. Company "
            "files must never be stored on private devices or private cloud storage.",
        ],
    ),
    (
        "4 Remote work and VPN",
        [
            "When working outside the office, connect through the company VPN before you open internal systems. Public "
            "Wi-Fi is allowed only with the VPN switched on. Do not work on confidential documents in public places where "
            "others can read your screen.",
        ],
    ),
    (
        "5 Classifying information",
        [
            "Information is Public, Internal, Confidential or Secret. Customer data and personnel files are Confidential. "
            "Confidential information may only be shared with people who need it for their work and never sent to private "
            "e-mail addresses. Secret information, such as merger plans, is shared only on a named list approved by the "
            "board.",
        ],
    ),
    (
        "6 Reporting incidents",
        [
            "Report a security incident immediately, and at the latest within 1 hour of noticing it, to the security team "
            "at security@northwind.example or by phone on extension 4444, day and night. Incidents include a lost or "
            "stolen laptop or phone, a suspicious e-mail you clicked, and data sent to the wrong person.",
            "Do not try to investigate an incident yourself and do not delete suspicious e-mails: forward them as an "
            "attachment to the security team. Personal data breaches are reported to the Data Protection Officer, who "
            "decides within 72 hours whether the authority must be notified.",
        ],
    ),
    (
        "7 Phishing",
        [
            "Be careful with e-mails that ask you to sign in, pay an invoice or open an attachment unexpectedly. Check the "
            "sender's address and hover over links before clicking. Use the Report Phishing button in the mail client. "
            "IT sends simulated phishing e-mails every quarter; reporting them counts as completing the exercise.",
        ],
    ),
]


def write_docx(path: Path) -> None:
    document = docx.Document()
    for kind, content in TRAVEL:
        if kind == "title":
            document.add_paragraph(content, style="Title")
        elif kind == "h1":
            document.add_heading(content, level=1)
        elif kind == "h2":
            document.add_heading(content, level=2)
        elif kind == "p":
            document.add_paragraph(content)
        elif kind == "bullet":
            document.add_paragraph(content, style="List Bullet")
        elif kind == "table":
            table = document.add_table(rows=len(content), cols=len(content[0]))
            for row, values in zip(table.rows, content, strict=True):
                for cell, value in zip(row.cells, values, strict=True):
                    cell.text = value
    document.core_properties.title = "Travel and Expenses Policy"
    document.save(str(path))


def write_pdf(path: Path) -> None:
    pages: list[list[str]] = [
        ["IT Security Policy", "", "Northwind Logistics, version 4.1, effective 1 March 2026.", ""]
    ]
    outline: list[OutlineItem] = []
    for heading, paragraphs in SECURITY_SECTIONS:
        block = [heading, ""]
        for paragraph in paragraphs:
            block += [*textwrap.wrap(paragraph, LINE_WIDTH), ""]
        if len(pages[-1]) + len(block) > LINES_PER_PAGE:
            pages.append([])
        outline.append(OutlineItem(heading, len(pages) - 1))
        pages[-1].extend(block)
    path.write_bytes(build_pdf(pages, title="IT Security Policy", outline=outline))


if __name__ == "__main__":
    write_docx(HERE / "travel-and-expenses.docx")
    write_pdf(HERE / "it-security-policy.pdf")
    print("wrote", HERE / "travel-and-expenses.docx", "and", HERE / "it-security-policy.pdf")
