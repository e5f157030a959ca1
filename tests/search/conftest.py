"""One corpus for the search tests, built once through the real ingestion pipeline (parse, chunk, embed,
index) and committed, so that every test reads it; it is removed when the package's tests end.

Tests here must not use `transactional_db`: its flush at teardown would wipe the shared corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from django.core.files.base import ContentFile
from django.db import connection, transaction

from ingest import services
from ingest.models import Chunk, Document
from kb.accounts.models import AccessGroup
from kb.search.indexing import index_apply

SEED = 20261124
GENERATED_DOCUMENTS = 30
SECTIONS_PER_DOCUMENT = 10  # each section becomes one chunk: 300 chunks for the BM25 oracle
FORBIDDEN_DOCUMENTS = 12  # group B's documents, all about the same topic, outranking group A's
ALLOWED_DOCUMENTS = 3
TOPIC = "zephyrine ledger reconciliation"

# Real English words, so that stop words and the stemmer take part; drawn with a Zipf-like skew so that
# document frequencies range from rare to common, as in real text.
WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when if so no out more what up can about into
them some could him than then only its other new time these two may first any like now my such over our
man even most made after also did many before must through back years where much your way well down should
because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old year off come
since against go came right used take three invoice ledger audit payroll supplier contract warranty travel
expense receipt budget forecast quarterly approval manager deadline reimbursement allowance mileage hotel
flight booking policy compliance training safety incident report escalation ticket server backup restore
password account access badge office parking holiday vacation sick leave parental pension insurance claim
benefit salary bonus review appraisal promotion onboarding offboarding laptop monitor keyboard printer
network firewall vpn certificate encryption retention archive deletion privacy consent customer invoice
refund discount shipping warehouse inventory procurement tender vendor evaluation scoring running runs ran
reconciled reconciling reconciliation payments paying paid payable receivable analysts analysing analysis
""".split()  # noqa: SIM905 - a word list reads better as text


@dataclass
class SearchCorpus:
    """What the shared corpus holds, for assertions."""

    group_a: AccessGroup
    group_b: AccessGroup
    public_ids: list[int] = field(default_factory=list)
    group_a_ids: list[int] = field(default_factory=list)
    group_b_ids: list[int] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)

    @property
    def document_ids(self) -> list[int]:
        return self.public_ids + self.group_a_ids + self.group_b_ids + self.generated_ids


def ingest_file(text: str, name: str, *, groups=None) -> Document:
    """Upload and process `text` here and now. Nothing is queued: in a transactional test a running Celery
    worker would otherwise process the same document at the same time."""
    from unittest import mock

    with mock.patch.object(services, "enqueue_processing", lambda document_id: True):
        result = services.document_upload(
            source=ContentFile(text.encode(), name=name), filename=name, access_groups=groups
        )
    assert result.accepted, result.message
    services.document_process(result.document.pk)
    document = Document.objects.get(pk=result.document.pk)
    assert document.searchable, document.error_message
    return document


def _zipf_word(rng: random.Random) -> str:
    # Rank r drawn with probability ~ 1/r.
    return WORDS[min(int(len(WORDS) ** rng.random()) - 1, len(WORDS) - 1)]


def _sentence(rng: random.Random) -> str:
    words = [_zipf_word(rng) for _ in range(rng.randint(8, 22))]
    return " ".join(words).capitalize() + "."


def _generated_markdown(rng: random.Random, number: int) -> str:
    parts = [f"# Generated handbook {number}"]
    for section in range(SECTIONS_PER_DOCUMENT):
        parts.append(f"## Part {section} {_zipf_word(rng)} {_zipf_word(rng)}")
        parts.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
    return "\n\n".join(parts)


def _topic_markdown(title: str, strength: int, filler: str) -> str:
    """A one-section document that mentions the topic `strength` times in `filler` text."""
    body = " ".join([f"The {TOPIC} procedure is described here."] * strength)
    return f"# {title}\n\n{body} {filler}\n"


def _build() -> SearchCorpus:
    rng = random.Random(SEED)
    corpus = SearchCorpus(
        group_a=AccessGroup.objects.create(name="search-group-a"),
        group_b=AccessGroup.objects.create(name="search-group-b"),
    )
    for number in range(GENERATED_DOCUMENTS):
        corpus.generated_ids.append(ingest_file(_generated_markdown(rng, number), f"generated-{number}.md").pk)
    for number in range(FORBIDDEN_DOCUMENTS):
        document = ingest_file(
            _topic_markdown(f"Restricted board memo {number}", 4, "Board members only."),
            f"board-{number}.md",
            groups=[corpus.group_b],
        )
        corpus.group_b_ids.append(document.pk)
    for number in range(ALLOWED_DOCUMENTS):
        document = ingest_file(
            _topic_markdown(
                f"Finance team note {number}", 1, "Finance staff compare the invoice list with bank statements."
            ),
            f"finance-{number}.md",
            groups=[corpus.group_a],
        )
        corpus.group_a_ids.append(document.pk)
    document = ingest_file(
        "# Travel policy\n\nEmployees book train travel through the travel desk. First class is allowed for "
        "journeys over three hours. The ledger reconciliation of travel expenses happens monthly.\n",
        "travel-policy.md",
    )
    corpus.public_ids.append(document.pk)
    document = ingest_file(
        "# 社内規定\n\n出張の申請は三日前までに上長へ提出してください。経費精算は月末に締め切ります。\n",
        "japanese-policy.md",
    )
    corpus.public_ids.append(document.pk)
    return corpus


def _remove(corpus: SearchCorpus) -> None:
    with transaction.atomic():
        chunk_ids = list(Chunk.objects.filter(document_id__in=corpus.document_ids).values_list("id", flat=True))
        index_apply(remove=chunk_ids)
        Document.objects.filter(pk__in=corpus.document_ids).delete()
        AccessGroup.objects.filter(pk__in=[corpus.group_a.pk, corpus.group_b.pk]).delete()
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM search_term WHERE df = 0")


@pytest.fixture(scope="package")
def search_corpus(django_db_setup, django_db_blocker) -> SearchCorpus:
    from unittest import mock

    with django_db_blocker.unblock():
        # Built once, outside any test's transaction: its upload events could not be removed afterwards (the audit
        # log refuses deletes) and would be found by a later test that expects the log it wrote itself.
        with mock.patch.object(services, "document_upload_audit", lambda **kwargs: None):
            corpus = _build()
        try:
            yield corpus
        finally:
            _remove(corpus)
