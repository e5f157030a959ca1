"""The HNSW index rebuilt with m = 32 and ef_construction = 128 (was 16 and 64): a better-linked graph, which
the scale corpus needs at a million passages to find 95 % of the exact nearest neighbours (README, Scale; chosen
on one third of its queries, reported on another). Built concurrently beside the old index by 0009's
`replace_index`, so that a server whose web processes keep running goes on searching and taking uploads; about
5.5 minutes at a million passages on 2 cores, a few seconds at SciFact's 12k (`make run` migrates before it
serves, so there the start waits for it)."""

import importlib

from django.db import migrations

_0009 = importlib.import_module("ingest.migrations.0009_chunk_embedding_halfvec")

# The graph of ~1M halfvec passages at m = 32 takes ~1.3 GB; below that the build uses what it needs.
MEMORY = "2GB"
M32 = "USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops) WITH (m = 32, ef_construction = 128)"


def forward(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        _0009.replace_index(cursor, M32, MEMORY)


def backward(apps, schema_editor) -> None:
    with schema_editor.connection.cursor() as cursor:
        _0009.replace_index(cursor, _0009.HALF)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("ingest", "0009_chunk_embedding_halfvec"),
    ]

    operations = [migrations.RunPython(forward, backward)]
