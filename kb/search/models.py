"""The keyword index: BM25 postings kept in PostgreSQL, in step with the chunks (GUIDE §6)."""

from __future__ import annotations

from django.db import models

from kb.search.analyzer import MAX_TERM_LENGTH


class Term(models.Model):
    text = models.CharField(max_length=MAX_TERM_LENGTH, unique=True)
    df = models.IntegerField(default=0, help_text="Chunks that contain the term")

    def __str__(self) -> str:
        return self.text


class Posting(models.Model):
    """One (term, chunk) pair. The table is created by hand in the first migration: its primary key is
    (term_id, chunk_id) INCLUDE (tf, len), so that scoring a term reads the index only."""

    pk = models.CompositePrimaryKey("term_id", "chunk_id")
    term = models.ForeignKey(Term, on_delete=models.DO_NOTHING, db_constraint=False)
    chunk = models.ForeignKey("ingest.Chunk", on_delete=models.DO_NOTHING, db_constraint=False)
    tf = models.IntegerField()
    len = models.IntegerField(help_text="Length of the chunk in terms, copied here to spare a lookup")

    class Meta:
        # Managed, so that Django's test flush empties it with the chunks; created by hand in 0001
        # (Django cannot declare INCLUDE columns on a primary key).
        db_table = "search_posting"

    def __str__(self) -> str:
        return f"{self.term_id}:{self.chunk_id}"


class IndexState(models.Model):
    """One row: corpus statistics for BM25 and a version that changes with every index change
    (answer caches are keyed by it)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    chunk_count = models.BigIntegerField(default=0)
    total_length = models.BigIntegerField(default=0)
    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"index v{self.version}: {self.chunk_count} chunks"

    @property
    def average_length(self) -> float:
        return self.total_length / self.chunk_count if self.chunk_count else 0.0


class PostingBlock(models.Model):
    """Postings of one term packed into byte strings (`kb.search.packing`): the BM25 leg reads a term's
    postings as a row instead of one row each. In chunk id order, big-endian int2 each: the gap from the
    previous chunk id (`base` is the first) and a code tf << 10 | len; gaps and postings beyond the codes'
    range are written out in `escapes` (int8) and `wide_tfs`, `wide_lens` (int4). The rows of `search_posting`
    stay the truth; blocks hold the postings moved out of PostingDelta, and may still list chunks deleted
    since (the leg drops chunks that no longer exist)."""

    term = models.ForeignKey(Term, on_delete=models.DO_NOTHING, db_constraint=False)
    base = models.BigIntegerField(help_text="The block's first chunk id")
    n = models.IntegerField(help_text="Postings in the block")
    gaps = models.BinaryField()
    codes = models.BinaryField()
    escapes = models.BinaryField(null=True)
    wide_tfs = models.BinaryField(null=True)
    wide_lens = models.BinaryField(null=True)  # term and chunk ids are indexed as foreign keys (without constraints)

    def __str__(self) -> str:
        return f"{self.term_id}: {self.n} postings"


class PostingDelta(models.Model):
    """Postings written since the last pack (a copy of their `search_posting` rows), moved into blocks by
    `packing.postings_pack`."""

    term = models.ForeignKey(Term, on_delete=models.DO_NOTHING, db_constraint=False)
    chunk = models.ForeignKey("ingest.Chunk", on_delete=models.DO_NOTHING, db_constraint=False)
    tf = models.IntegerField()
    len = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.term_id}:{self.chunk_id}"


class PackPending(models.Model):
    """Present (one row) while the blocks do not yet hold the postings written before they existed: the BM25
    leg then scores the `search_posting` rows. A full pack removes it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    since = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"postings not packed since {self.since:%Y-%m-%d %H:%M}"
