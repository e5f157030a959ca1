"""One analyzer for documents and queries: PostgreSQL's `english` text search configuration.

It tokenizes, drops English stop words and applies the Snowball English stemmer; doing it in the
database keeps one definition for ingestion and search on every machine. Returns term frequencies.
"""

from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.db import connection

# Longer "words" (hashes, base64 blobs) are nobody's search term; PostgreSQL keeps up to 2047 characters.
MAX_TERM_LENGTH = 200

_SQL = """
SELECT t.ord, l.lexeme, coalesce(array_length(l.positions, 1), 1)
FROM unnest(%s::text[]) WITH ORDINALITY AS t(body, ord),
     LATERAL unnest(to_tsvector(%s::regconfig, t.body)) AS l
WHERE length(l.lexeme) <= %s
"""


def analyze(texts: list[str]) -> list[Counter[str]]:
    """Term frequencies for each text, in order (an empty Counter for a text with no terms)."""
    result: list[Counter[str]] = [Counter() for _ in texts]
    if not texts:
        return result
    with connection.cursor() as cursor:
        cursor.execute(_SQL, [texts, settings.KB_TEXT_SEARCH_CONFIG, MAX_TERM_LENGTH])
        for ordinal, lexeme, tf in cursor.fetchall():
            result[ordinal - 1][lexeme] = tf
    return result
