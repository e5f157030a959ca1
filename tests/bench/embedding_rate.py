"""One process of the ingestion benchmark's model-alone measurement, laid out as the worker pool is.

    python -m tests.bench.embedding_rate PASSAGES.json SHARE PROCESSES THREADS START_AT

Loads the model with THREADS torch threads, warms it up, waits until START_AT (epoch seconds, the same for
every process), embeds its share (every PROCESSES-th passage from SHARE) in one call and prints the time
at which it finished. Run with the test settings (tests.conftest.subprocess_env).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import django


def main(argv: list[str]) -> None:
    path, share, processes, threads, start_at = argv
    django.setup()
    from kb.search import embeddings

    passages = json.loads(Path(path).read_text())[int(share) :: int(processes)]
    embeddings.use_threads(int(threads))
    embeddings.embed(passages[:16])
    time.sleep(max(0.0, float(start_at) - time.time()))
    embeddings.embed(passages)
    print(json.dumps({"finished_at": time.time(), "passages": len(passages)}))


if __name__ == "__main__":
    main(sys.argv[1:])
