"""Embedding in batches of similar length: the vectors are those of each text alone, in the caller's order."""

import numpy as np
import pytest

from kb.celery import worker_torch_threads
from kb.search import embeddings
from kb.search.embeddings import length_batches


def test_length_batches_cover_every_text_once_longest_first_and_cap_the_batch():
    lengths = [120, 30, 118, 119, 121, 117, 116, 122, 29, 115, 28]
    batches = length_batches(lengths, 4, tolerance=0.75)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= 4 for batch in batches)
    order = [lengths[i] for batch in batches for i in batch]
    assert order == sorted(lengths, reverse=True)
    # 115-122 fill batches of four; the short ones are never padded to 115.
    assert [[lengths[i] for i in batch] for batch in batches] == [
        [122, 121, 120, 119],
        [118, 117, 116, 115],
        [30, 29, 28],
    ]


def test_a_text_much_shorter_than_its_batch_starts_a_new_one():
    assert length_batches([100, 76, 74, 60], 8, tolerance=0.75) == [[0, 1], [2, 3]]
    assert length_batches([], 8) == []
    assert length_batches([5], 8) == [[0]]


def test_embed_returns_each_texts_own_vector_in_the_callers_order():
    texts = [
        "Parking",
        "Visitors park on level -1 of the north garage; the gate opens with the badge from reception. " * 6,
        "Expense claims are filed within 30 days.",
        "The travel desk books hotels and trains for every employee, " * 3,
        "VPN",
    ]
    together = embeddings.embed(texts, batch_size=2)
    alone = np.stack([embeddings.embed([text])[0] for text in texts])
    assert together.shape == (5, 384) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose((together * alone).sum(axis=1), 1.0, atol=1e-4), "each row is its own text's vector"


@pytest.mark.parametrize(
    ("cores", "processes", "setting", "expected"), [(2, 2, 0, 1), (8, 2, 0, 4), (2, 3, 0, 1), (2, 2, 3, 3)]
)
def test_worker_processes_share_the_cores_unless_told(monkeypatch, settings, cores, processes, setting, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings.KB_WORKER_TORCH_THREADS = setting
    assert worker_torch_threads(processes) == expected
