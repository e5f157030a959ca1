"""Ingestion through the database with the real embedding model and the real keyword index."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from ingest import services
from ingest.models import Chunk, Document, DocumentStatus
from kb.search import embeddings
from kb.search.models import IndexState
from tests.factories import AccessGroupFactory
from tests.ingest import fixtures_build as build

pytestmark = pytest.mark.django_db

HANDBOOK = b"""# Handbook

## Travel

Employees book train travel through the travel desk. First class is allowed for journeys over three hours.

## Expenses

Claims are submitted within thirty days with receipts attached. Meals abroad are reimbursed up to 60 euros.
"""


def upload(data: bytes, name: str = "handbook.md", **kwargs) -> services.UploadResult:
    return services.document_upload(source=ContentFile(data, name=name), filename=name, **kwargs)


def ingest(data: bytes, name: str = "handbook.md", **kwargs) -> Document:
    result = upload(data, name, **kwargs)
    assert result.accepted, result.message
    services.document_process(result.document.pk)
    return Document.objects.get(pk=result.document.pk)


def postings_of(document: Document) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.chunk_id, t.text, p.tf, p.len FROM search_posting p JOIN search_term t ON t.id = p.term_id "
            "JOIN ingest_chunk c ON c.id = p.chunk_id WHERE c.document_id = %s ORDER BY 1, 2",
            [document.pk],
        )
        return cursor.fetchall()


def assert_index_consistent() -> None:
    """Document frequencies and corpus statistics equal what the postings and chunks say."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.text, t.df, count(p.chunk_id) FROM search_term t LEFT JOIN search_posting p ON p.term_id = t.id "
            "GROUP BY t.id HAVING t.df <> count(p.chunk_id)"
        )
        assert cursor.fetchall() == []
        cursor.execute("SELECT count(*) FROM ingest_chunk")
        chunks = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(sum(len), 0) FROM (SELECT DISTINCT chunk_id, len FROM search_posting) s")
        length = cursor.fetchone()[0]
    state = IndexState.objects.get()
    assert (state.chunk_count, state.total_length) == (chunks, length)


def test_a_markdown_file_becomes_ready_chunks_with_vectors_and_postings(knowledge_admin):
    document = ingest(HANDBOOK, uploaded_by=knowledge_admin)
    assert document.status == DocumentStatus.READY
    assert document.searchable
    assert document.embedding_model == embeddings.model_id()
    chunks = list(document.chunks.order_by("ordinal"))
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert document.chunks_total == document.chunks_embedded == len(chunks) >= 2
    travel = next(c for c in chunks if "train travel" in c.text)
    assert travel.heading_path == ["Handbook", "Travel"]
    assert len(travel.embedding) == 384
    assert abs(sum(v * v for v in travel.embedding) - 1) < 1e-3
    terms = {text for chunk_id, text, *_ in postings_of(document) if chunk_id == travel.pk}
    assert {"train", "travel", "handbook"} <= terms  # stemmed by the english configuration
    assert "the" not in terms
    assert_index_consistent()


def test_identical_bytes_are_a_duplicate_and_cause_no_work(db):
    first = ingest(HANDBOOK)
    result = upload(HANDBOOK, name="copy-of-handbook.md")
    assert result.outcome == "duplicate"
    assert result.document == first
    assert "identical" in result.message
    assert Document.objects.count() == 1


def test_a_new_file_with_the_same_title_is_a_new_version_that_replaces_the_old_when_ready(db):
    old = ingest(HANDBOOK)
    old_chunk_ids = set(old.chunks.values_list("id", flat=True))
    result = upload(HANDBOOK.replace(b"60 euros", b"75 euros"))
    assert result.outcome == "new_version"
    new = result.document
    assert (new.version, new.replaces, new.lineage) == (2, old, old.lineage)
    # Until the new version is ready the old one keeps answering.
    old.refresh_from_db()
    assert old.searchable and old.status == DocumentStatus.READY
    services.document_process(new.pk)
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.status, old.searchable) == (DocumentStatus.SUPERSEDED, False)
    assert (new.status, new.searchable) == (DocumentStatus.READY, True)
    assert not Chunk.objects.filter(id__in=old_chunk_ids).exists()
    assert any("75 euros" in c.text for c in new.chunks.all())
    assert_index_consistent()


def test_a_new_version_keeps_the_access_groups(db):
    finance = AccessGroupFactory(name="Finance")
    old = ingest(HANDBOOK, access_groups=[finance])
    new = upload(HANDBOOK + b"\nMore.\n").document
    assert list(new.access_groups.all()) == [finance]
    assert new.replaces == old


def test_processing_twice_gives_the_same_chunks_once(db):
    document = ingest(HANDBOOK)
    before = list(document.chunks.order_by("ordinal").values_list("ordinal", "text"))
    services.document_process(document.pk)  # finished: nothing to do
    # A half-finished run whose worker died while embedding (its lease ran out) starts over and writes each
    # chunk once.
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.EMBEDDING, heartbeat_at=LONG_AGO)
    services.document_process(document.pk)
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.QUEUED)
    services.document_process(document.pk)
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY
    assert list(document.chunks.order_by("ordinal").values_list("ordinal", "text")) == before
    assert_index_consistent()


LONG_AGO = timezone.now() - timedelta(days=1)


def test_a_document_in_progress_under_a_live_lease_is_left_to_its_worker(db):
    document = upload(HANDBOOK).document
    Document.objects.filter(pk=document.pk).update(status=DocumentStatus.PARSING, heartbeat_at=timezone.now())
    services.document_process(document.pk)  # a duplicate message while another worker has it
    document.refresh_from_db()
    assert (document.status, document.attempts, document.chunks.count()) == (DocumentStatus.PARSING, 0, 0)
    Document.objects.filter(pk=document.pk).update(heartbeat_at=LONG_AGO)  # that worker died
    services.document_process(document.pk)
    document.refresh_from_db()
    assert (document.status, document.attempts) == (DocumentStatus.READY, 1)


def small_files(count: int, start: int = 0) -> list[Document]:
    return [
        upload(
            f"# Note {i}\n\nThe {i}th canteen rule concerns tray number {i * 7}.\n".encode(), f"note-{i}.md"
        ).document
        for i in range(start, start + count)
    ]


def test_queued_small_documents_are_processed_together_each_as_if_alone(db):
    notes = small_files(5)
    pdf = upload(build.policy_pdf(), "policy.pdf").document
    later = small_files(1, start=5)  # beyond the batch
    services.document_process(notes[2].pk, batch=5)
    states = {d.pk: (d.status, d.attempts) for d in Document.objects.all()}
    # The first document and the four oldest other queued small ones; the PDF (it may need OCR) waits its turn.
    taken = [notes[2], notes[0], notes[1], notes[3], notes[4]]
    assert all(states[d.pk] == (DocumentStatus.READY, 1) for d in taken)
    assert states[pdf.pk] == states[later[0].pk] == (DocumentStatus.QUEUED, 0)
    chunks = []
    for i, note in enumerate(notes):
        note.refresh_from_db()
        assert note.title == f"Note {i}" and note.embedding_model == embeddings.model_id()
        chunk = note.chunks.get()
        assert f"tray number {i * 7}." in chunk.text
        assert note.chunks_embedded == note.chunks_total == 1
        chunks.append(chunk)
    # Each vector is its own passage's, not a neighbour's (the notes differ in a number only): nearest to the
    # passage embedded alone, and as close as the arithmetic allows (int8 passes: settings.KB_EMBEDDING_INT8).
    texts = [services.indexed_text(n.title, c.text, c.heading_path) for n, c in zip(notes, chunks, strict=True)]
    alone = np.stack([embeddings.embed([text])[0] for text in texts])
    for i, chunk in enumerate(chunks):
        similarity = alone @ np.asarray(chunk.embedding)
        assert int(np.argmax(similarity)) == i and similarity[i] > 0.995
    assert_index_consistent()


def test_the_messages_of_documents_taken_into_a_batch_cost_one_read_each(db, django_assert_num_queries):
    """Each small document still has its own message; once its document is done, or in another worker's batch
    under a live lease, the message is answered by one plain read: no locking transaction, no commit."""
    notes = small_files(3)
    services.document_process(notes[0].pk, batch=3)
    with django_assert_num_queries(1):
        services.document_process(notes[1].pk, batch=3)  # done in notes[0]'s batch
    other = small_files(1, start=3)[0]
    Document.objects.filter(pk=other.pk).update(status=DocumentStatus.PARSING, heartbeat_at=timezone.now())
    with django_assert_num_queries(1):
        services.document_process(other.pk, batch=3)  # another worker's, under a live lease
    assert Document.objects.get(pk=other.pk).status == DocumentStatus.PARSING
    Document.objects.filter(pk=other.pk).update(heartbeat_at=LONG_AGO)  # that worker died: taken over
    services.document_process(other.pk, batch=3)
    assert Document.objects.get(pk=other.pk).status == DocumentStatus.READY


def test_a_damaged_file_in_a_batch_fails_alone(db):
    notes = small_files(2)
    damaged = upload(build.build_docx()[:300], "damaged.docx").document
    more = small_files(1, start=2)
    services.document_process(notes[0].pk, batch=10)
    damaged.refresh_from_db()
    assert damaged.status == DocumentStatus.FAILED and damaged.error_message
    assert set(
        Document.objects.filter(pk__in=[notes[0].pk, notes[1].pk, more[0].pk]).values_list("status", flat=True)
    ) == {DocumentStatus.READY}
    assert_index_consistent()


def test_when_a_batch_breaks_the_others_go_back_to_the_queue_and_are_sent_again(db, monkeypatch):
    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    notes = small_files(3)

    def broken(texts, **kwargs):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(embeddings, "embed", broken)
    with pytest.raises(RuntimeError):
        services.document_process(notes[0].pk, batch=3)  # the task reports the first document's failure
    assert sent == [notes[1].pk, notes[2].pk]
    assert list(Document.objects.filter(pk__in=sent).values_list("status", flat=True)) == [DocumentStatus.QUEUED] * 2
    assert not Chunk.objects.exists()


def test_uploads_made_together_send_their_small_documents_in_one_message_per_batch(
    db, monkeypatch, settings, django_capture_on_commit_callbacks
):
    from ingest import tasks

    settings.KB_INGEST_BATCH_DOCUMENTS = 4
    singles, groups = [], []
    monkeypatch.setattr(tasks.process_document, "delay", singles.append)
    monkeypatch.setattr(tasks.process_documents, "delay", groups.append)
    with services.processing_sent_together():
        with django_capture_on_commit_callbacks(execute=True):  # each upload's commit, as outside a test
            notes = small_files(4)
        assert groups == [[d.pk for d in notes]]  # sent as soon as a batch is full
        with django_capture_on_commit_callbacks(execute=True):
            notes += small_files(2, start=4)
            pdf = upload(build.policy_pdf(), "policy.pdf").document
        assert len(groups) == 1 and not singles
    assert groups == [[d.pk for d in notes[:4]], [d.pk for d in notes[4:]]]
    assert singles == [pdf.pk]  # a scan is processed on its own, never in a batch

    with django_capture_on_commit_callbacks(execute=True):
        alone = small_files(1, start=6)[0]  # outside: one message per document, as before
    assert singles == [pdf.pk, alone.pk]


def test_uploads_made_together_are_sent_even_when_the_upload_loop_breaks(db, monkeypatch):
    from ingest import tasks

    groups = []
    monkeypatch.setattr(tasks.process_documents, "delay", groups.append)
    notes = small_files(3)
    with pytest.raises(RuntimeError), services.processing_sent_together():
        for document in notes:
            services.enqueue_processing(document.pk)
        raise RuntimeError("the request broke off")
    assert groups == [[d.pk for d in notes]]


def test_a_document_takes_the_documents_sent_with_it_before_older_queued_ones(db):
    older = small_files(2)
    sent = small_files(2, start=2)
    services.document_process(sent[0].pk, batch=2, mates=[d.pk for d in sent])
    states = dict(Document.objects.values_list("pk", "status"))
    assert [states[d.pk] for d in sent] == [DocumentStatus.READY] * 2
    assert [states[d.pk] for d in older] == [DocumentStatus.QUEUED] * 2


def test_a_message_of_documents_processes_each_whatever_happens_to_one(db, monkeypatch):
    from ingest.tasks import process_documents

    boom, taken, *rest = small_files(4)
    Document.objects.filter(pk=taken.pk).update(status=DocumentStatus.PARSING, heartbeat_at=timezone.now())
    real = services.document_process

    def breaking(document_id, **kwargs):
        if document_id == boom.pk:
            raise RuntimeError("a bug")
        return real(document_id, **kwargs)

    monkeypatch.setattr(services, "document_process", breaking)
    process_documents([boom.pk, taken.pk, *(d.pk for d in rest)])  # runs the task body here
    states = dict(Document.objects.values_list("pk", "error_code"))
    assert Document.objects.get(pk=boom.pk).status == DocumentStatus.FAILED and states[boom.pk] == "internal_error"
    assert Document.objects.get(pk=taken.pk).status == DocumentStatus.PARSING  # another worker's, under its lease
    assert {d.status for d in Document.objects.filter(pk__in=[d.pk for d in rest])} == {DocumentStatus.READY}


def test_a_message_of_documents_out_of_time_puts_the_rest_back_each_on_its_own(db, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from ingest.tasks import process_documents

    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    notes = small_files(4)
    Document.objects.filter(pk=notes[0].pk).update(status=DocumentStatus.PARSING, heartbeat_at=timezone.now())

    def slow(document_id, **kwargs):
        if document_id == notes[1].pk:
            Document.objects.filter(pk=document_id).update(status=DocumentStatus.EMBEDDING)  # as if claimed
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services, "document_process", slow)
    process_documents([d.pk for d in notes])
    second = Document.objects.get(pk=notes[1].pk)
    assert second.status == DocumentStatus.QUEUED  # the limit counted the whole message: not this one's fault
    assert sent == [notes[1].pk, notes[2].pk, notes[3].pk]

    process_documents([notes[1].pk, notes[2].pk])  # out of time on the message's first: that one is failed
    second.refresh_from_db()
    assert (second.status, second.error_code) == (DocumentStatus.FAILED, "timeout")


def test_reindex_rebuilds_without_downtime(db):
    document = ingest(HANDBOOK)
    assert services.document_reindex(document=document)
    document.refresh_from_db()
    assert document.status == DocumentStatus.QUEUED
    assert document.searchable and document.chunks.exists()  # still answering while queued
    services.document_process(document.pk)
    document.refresh_from_db()
    assert document.status == DocumentStatus.READY
    assert_index_consistent()


def test_delete_removes_chunks_postings_and_the_stored_file(django_capture_on_commit_callbacks, db):
    document = ingest(HANDBOOK)
    version = IndexState.objects.get().version
    path = document.original.path
    with django_capture_on_commit_callbacks(execute=True):
        services.document_delete(document=document)
    document.refresh_from_db()
    assert document.status == DocumentStatus.DELETED
    assert not document.chunks.exists()
    assert postings_of(document) == []
    assert IndexState.objects.get().version > version
    import os

    assert not os.path.exists(path)
    assert_index_consistent()


def test_a_document_deleted_while_processing_is_dropped(db, monkeypatch):
    document = upload(HANDBOOK).document
    real_embed = embeddings.embed

    def embed_then_delete(texts, **kwargs):
        services.document_delete(document=Document.objects.get(pk=document.pk))
        return real_embed(texts, **kwargs)

    monkeypatch.setattr(embeddings, "embed", embed_then_delete)
    services.document_process(document.pk)
    document.refresh_from_db()
    assert document.status == DocumentStatus.DELETED
    assert not document.chunks.exists()
    assert_index_consistent()


def test_a_failed_reindex_leaves_the_previous_index_serving(db, monkeypatch):
    document = ingest(HANDBOOK)
    services.document_reindex(document=document)
    monkeypatch.setattr(services, "parse", _raise_parse_error)
    services.document_process(document.pk)
    document.refresh_from_db()
    assert document.status == DocumentStatus.FAILED
    assert document.searchable and document.chunks.exists()
    assert "previously indexed content keeps answering" in document.error_message


def _raise_parse_error(*args, **kwargs):
    from ingest.parsers import ParseError

    raise ParseError("corrupt_pdf", "This PDF is damaged and cannot be read.")


def test_interleaved_ingestion_and_deletion_keep_document_frequencies_exact(db):
    a = ingest(HANDBOOK)
    ingest(b"# Travel desk\n\nThe travel desk books trains and hotels for every trip.\n", name="desk.md")
    services.document_delete(document=a)
    ingest(b"# Trains\n\nTrains leave every hour. Travel light.\n", name="trains.md")
    assert_index_consistent()
    with connection.cursor() as cursor:
        cursor.execute("SELECT df FROM search_term WHERE text = 'travel'")
        assert cursor.fetchone()[0] == 2  # one chunk in each remaining document


def test_the_stalled_documents_are_sent_again(db, monkeypatch):
    from datetime import timedelta

    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    stuck = upload(HANDBOOK).document
    Document.objects.filter(pk=stuck.pk).update(status=DocumentStatus.EMBEDDING)
    assert services.documents_resume_stalled(stalled_for=timedelta(hours=1)) == []
    assert services.documents_resume_stalled(stalled_for=timedelta(0)) == [stuck.pk]
    assert sent == [stuck.pk]


def test_a_changed_embedding_model_marks_documents_for_reindexing(db, settings):
    document = ingest(HANDBOOK)
    assert not services.documents_with_stale_embeddings().exists()
    Document.objects.filter(pk=document.pk).update(embedding_model="another-model@256")
    assert list(services.documents_with_stale_embeddings()) == [document]
    assert services.documents_reindex_stale_embeddings() == 1
    document.refresh_from_db()
    assert document.status == DocumentStatus.QUEUED


def test_passage_context_does_not_repeat_the_title():
    assert services.passage_context("Handbook", ["Handbook", "Travel"]) == "Handbook › Travel"
    assert services.passage_context("Guide", ["Intro"]) == "Guide › Intro"
    assert services.passage_context("Guide", []) == "Guide"


def test_analyzer_counts_term_frequencies():
    from kb.search.analyzer import analyze

    first, empty = analyze(["Trains and training: the train leaves.", "the of and"])
    assert first == Counter({"train": 3, "leav": 1})
    assert empty == Counter()


def test_a_word_too_long_to_be_a_term_does_not_stop_a_document(db):
    document = ingest(b"# Keys\n\nThe key is " + b"A" * 300 + b" and it rotates monthly.\n", name="keys.md")
    assert document.status == DocumentStatus.READY
    assert_index_consistent()


def test_an_unexpected_error_fails_the_document_with_a_reason(db, monkeypatch):
    from ingest.tasks import process_document

    document = upload(HANDBOOK).document
    monkeypatch.setattr(services, "chunk_document", lambda *a, **k: 1 / 0)
    process_document(document.pk)  # runs the task body here
    document.refresh_from_db()
    assert (document.status, document.error_code) == (DocumentStatus.FAILED, "internal_error")
    assert "unexpected error" in document.error_message


def test_queued_documents_in_a_backlog_are_not_resent_until_long_after(db, monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    waiting = upload(HANDBOOK).document
    Document.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    assert services.documents_resume_stalled() == []  # ten minutes in a queue is a backlog, not a loss
    Document.objects.filter(pk=waiting.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.KB_INGEST_QUEUED_RESEND_SECONDS + 1)
    )
    assert services.documents_resume_stalled() == [waiting.pk]


def test_a_document_whose_reindex_failed_still_takes_the_next_version(db, monkeypatch):
    old = ingest(HANDBOOK)
    services.document_reindex(document=old)
    monkeypatch.setattr(services, "parse", _raise_parse_error)
    services.document_process(old.pk)
    monkeypatch.undo()
    result = upload(HANDBOOK + b"\nRevised.\n")
    assert result.outcome == "new_version" and result.document.lineage == old.lineage
    services.document_process(result.document.pk)
    old.refresh_from_db()
    assert (old.status, old.searchable) == (DocumentStatus.SUPERSEDED, False)


def test_a_later_version_ready_first_wins_over_an_earlier_one(db):
    v1 = ingest(HANDBOOK)
    v2 = upload(HANDBOOK + b"\nTwo.\n").document
    v3 = upload(HANDBOOK + b"\nThree.\n").document
    assert (v2.version, v3.version) == (2, 3)
    services.document_process(v3.pk)
    services.document_process(v2.pk)
    states = dict(Document.objects.filter(lineage=v1.lineage).values_list("version", "status"))
    assert states == {1: "superseded", 2: "superseded", 3: "ready"}
    assert Document.objects.filter(lineage=v1.lineage, searchable=True).count() == 1
    assert_index_consistent()


def test_a_transient_error_in_a_batch_leaves_the_first_document_to_the_task_s_retry(db, monkeypatch):
    from django.db import OperationalError

    sent = []
    monkeypatch.setattr(services, "enqueue_processing", lambda document_id: sent.append(document_id) or True)
    notes = small_files(2)
    real_embed = embeddings.embed

    def failing_once(texts, **kwargs):
        monkeypatch.setattr(embeddings, "embed", real_embed)
        raise OperationalError("the connection was reset")

    monkeypatch.setattr(embeddings, "embed", failing_once)
    with pytest.raises(OperationalError):
        services.document_process(notes[0].pk, batch=2)
    assert sent == [notes[1].pk]  # the first is Celery's to retry: it is queued again, not sent twice
    assert set(Document.objects.values_list("status", flat=True)) == {DocumentStatus.QUEUED}
    services.document_process(notes[0].pk, batch=1)  # the retry
    assert Document.objects.get(pk=notes[0].pk).status == DocumentStatus.READY


def test_two_versions_of_a_document_in_one_batch_leave_the_newer_serving(db):
    first = upload(HANDBOOK).document
    second = upload(HANDBOOK + b"\nMeals at home are not reimbursed.\n").document
    assert second.lineage == first.lineage and second.version == 2
    others = small_files(2)
    services.document_process(first.pk, batch=10)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.searchable) == (DocumentStatus.SUPERSEDED, False)
    assert (second.status, second.searchable) == (DocumentStatus.READY, True)
    assert not first.chunks.exists() and second.chunks.exists()
    assert all(d.status == DocumentStatus.READY for d in Document.objects.filter(pk__in=[o.pk for o in others]))
    assert_index_consistent()


def test_a_document_deleted_before_its_batch_is_written_drops_out_alone(db, monkeypatch):
    notes = small_files(3)
    real_embed = embeddings.embed

    def embed_then_delete(texts, **kwargs):
        vectors = real_embed(texts, **kwargs)
        Document.objects.filter(pk=notes[1].pk).update(status=DocumentStatus.DELETED)
        return vectors

    monkeypatch.setattr(embeddings, "embed", embed_then_delete)
    services.document_process(notes[0].pk, batch=3)
    statuses = dict(Document.objects.values_list("pk", "status"))
    assert statuses == {notes[0].pk: "ready", notes[1].pk: "deleted", notes[2].pk: "ready"}
    assert not Chunk.objects.filter(document=notes[1]).exists()
    assert_index_consistent()
