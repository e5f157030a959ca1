"""The demo corpus answers a fresh install and never a company's questions once the company's own documents
are ready: asked end to end through kb.answers.services with the extractive chain (what `make run` does with no
API key), on the real demo files, the real pipeline and PostgreSQL."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from ingest import services as ingest_services
from ingest.models import Document
from kb.answers import services
from kb.answers.models import Exchange
from tests.search.conftest import ingest_file

pytestmark = pytest.mark.django_db

# Worded like the demo company's mileage rule ("reimbursed 0.23 euros per kilometre ... your own car for business
# trips"), not like the company's own, which speaks of pence per mile.
MILEAGE = "How many euros per kilometre are reimbursed when I use my own car for business trips?"

COMPANY_TRAVEL = """# Travel and Expenses Policy

## Mileage
Staff who drive a private vehicle on company business claim 45p per mile for the first 10,000 miles in a
tax year and 25p per mile after that. Log each journey with its start and end postcodes.

## Hotels
Book hotels through the travel desk. In London the limit is £210 per night, elsewhere in the UK £140.
"""


@pytest.fixture
def demo(settings, tmp_path, monkeypatch) -> dict[str, Document]:
    """The demo corpus as the first start loads it, indexed."""
    settings.KB_DATA_DIR = tmp_path
    settings.KB_MODELS = ["extractive"]
    monkeypatch.setattr(ingest_services, "enqueue_processing", lambda document_id: True)
    assert ingest_services.demo_corpus_ensure(stdout=lambda line: None) == 5
    for document in Document.objects.all():
        ingest_services.document_process(document.pk)
    return {document.filename: document for document in Document.objects.demo().searchable()}


def _documents_seen(result: dict) -> set[int]:
    exchange = Exchange.objects.get(pk=result["exchange_id"])
    return {c["document_id"] for c in result["citations"]} | {p["document_id"] for p in exchange.passages}


def test_a_deployment_with_its_own_documents_never_cites_the_demo_corpus(demo, employee, superuser):
    assert len(demo) == 5
    demo_ids = {document.pk for document in demo.values()}
    fresh = services.ask(MILEAGE, employee)
    # On a fresh install the question is the demo corpus's: it answers it, from the demo travel policy.
    assert not fresh["refused"] and "0.23" in fresh["answer"]
    assert demo["travel-and-expenses.docx"].pk in {c["document_id"] for c in fresh["citations"]}

    # The company's own travel policy, under the very title of the demo one: its own document, not a new
    # version of the demo company's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest_services, "enqueue_processing", lambda document_id: True)
        upload = ingest_services.document_upload(
            source=ContentFile(COMPANY_TRAVEL.encode(), name="uk-travel.md"),
            filename="uk-travel.md",
            title="Travel and Expenses Policy",
        )
    assert upload.outcome == "queued", upload.message
    ingest_services.document_process(upload.document.pk)
    company = Document.objects.get(pk=upload.document.pk)
    assert company.searchable and company.lineage != demo["travel-and-expenses.docx"].lineage
    assert demo["travel-and-expenses.docx"].title == company.title

    for user in (employee, superuser):  # a reader of some groups, and one who reads every document
        result = services.ask(MILEAGE, user)
        seen = _documents_seen(result)
        assert not seen & demo_ids, (user, result["answer"])  # neither cited nor even retrieved
        assert "0.23" not in result["answer"] and "kilometre" not in result["answer"]
        assert seen <= {company.pk}


def test_the_demo_corpus_answers_again_only_when_the_company_has_no_ready_document(demo, employee):
    company = ingest_file(COMPANY_TRAVEL, "uk-travel.md")
    assert not _documents_seen(services.ask(MILEAGE, employee)) & {d.pk for d in demo.values()}
    ingest_services.document_delete(document=company)
    again = services.ask(MILEAGE, employee)
    assert demo["travel-and-expenses.docx"].pk in {c["document_id"] for c in again["citations"]}
