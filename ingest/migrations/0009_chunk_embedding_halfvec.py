"""The HNSW index on half-precision copies of the chunk vectors (pgvector's halfvec): half the size of the float32
index with the same recall at 100k passages (README, Scale). Written by hand: Django's index expressions put the
operator class inside the cast's parentheses. Built concurrently beside the old index, which is dropped only then,
so that searches and ingestion go on meanwhile (the build takes about as long as the first, ~6 minutes at a
million passages on 2 cores). `IF EXISTS`: a benchmark database may hold no index while it bulk-loads."""

from django.db import migrations

HALF = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS chunk_embedding_hnsw_half ON ingest_chunk "
    "USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
)
FLOAT32 = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS chunk_embedding_hnsw ON ingest_chunk "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("ingest", "0008_document_upload_lookups"),
    ]

    operations = [
        migrations.RunSQL(sql=HALF, reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS chunk_embedding_hnsw_half"),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveIndex(model_name="chunk", name="chunk_embedding_hnsw")],
            database_operations=[
                migrations.RunSQL(sql="DROP INDEX CONCURRENTLY IF EXISTS chunk_embedding_hnsw", reverse_sql=FLOAT32)
            ],
        ),
        migrations.RunSQL(
            sql="ALTER INDEX chunk_embedding_hnsw_half RENAME TO chunk_embedding_hnsw",
            reverse_sql="ALTER INDEX chunk_embedding_hnsw RENAME TO chunk_embedding_hnsw_half",
        ),
    ]
