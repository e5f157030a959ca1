"""The HNSW index on half-precision copies of the chunk vectors (pgvector's halfvec): half the size of the float32
index with the same recall at 100k passages (README, Scale). Written by hand: Django's index expressions put the
operator class inside the cast's parentheses.

Built concurrently beside the old index, which is dropped only once the new one is valid, so that searches and
uploads go on meanwhile (the build takes about as long as the first, ~6 minutes at a million passages on 2 cores).
Without the connections' statement timeout (it would cancel the build of any sizeable index) and with room for the
graph in memory. A build that was interrupted leaves its index behind: it is dropped and built again, never
renamed into place."""

from django.db import migrations

HALF = "USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
FLOAT32 = "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
# Enough for the graph of ~1M halfvec passages; below that the build uses what it needs.
MAINTENANCE_WORK_MEM = "1GB"


def _valid(cursor, name: str) -> bool | None:
    """True / False for a valid / invalid index `name`, None when there is none."""
    cursor.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = 'public'::regnamespace",
        [name],
    )
    row = cursor.fetchone()
    return None if row is None else bool(row[0])


def replace_index(cursor, method: str, memory: str = MAINTENANCE_WORK_MEM) -> None:
    """Build `chunk_embedding_hnsw` anew with `method`, concurrently, and drop the one it replaces."""
    cursor.execute("SELECT current_setting('statement_timeout'), current_setting('maintenance_work_mem')")
    timeout, previous = cursor.fetchone()
    cursor.execute("SET statement_timeout = 0")
    cursor.execute("SET maintenance_work_mem = %s", [memory])
    try:
        # Left by an interrupted run, perhaps of another migration's method (0010 uses this too): built again.
        cursor.execute("DROP INDEX CONCURRENTLY IF EXISTS chunk_embedding_hnsw_new")
        cursor.execute(f"CREATE INDEX CONCURRENTLY chunk_embedding_hnsw_new ON ingest_chunk {method}")
        if not _valid(cursor, "chunk_embedding_hnsw_new"):
            raise RuntimeError("the new HNSW index chunk_embedding_hnsw_new is not valid; run the migration again")
        cursor.execute("DROP INDEX CONCURRENTLY IF EXISTS chunk_embedding_hnsw")
        cursor.execute("ALTER INDEX chunk_embedding_hnsw_new RENAME TO chunk_embedding_hnsw")
    finally:
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [previous])


def forward(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        replace_index(cursor, HALF)


def backward(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        replace_index(cursor, FLOAT32)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("ingest", "0008_document_upload_lookups"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.RemoveIndex(model_name="chunk", name="chunk_embedding_hnsw")],
            database_operations=[migrations.RunPython(forward, backward)],
        ),
    ]
