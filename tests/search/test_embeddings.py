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


def test_embed_gives_the_vectors_of_the_models_own_encode(settings):
    """embed() runs the model's modules itself (not `encode`): the vectors must be the ones sentence-transformers
    gives, so that an upgrade of it that changes its preprocessing shows here, not in the rankings."""
    settings.KB_EMBEDDING_PRECISION = "float32"  # encode's own arithmetic
    texts = ["VPN", "Expense claims are filed within 30 days of the trip. " * 12, "Who approves flights?"]
    model = embeddings.get_model()
    reference = model.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(embeddings.embed(texts, batch_size=8) - reference).max() < 1e-5


def test_padding_to_a_multiple_is_masked_out_and_changes_nothing():
    import torch

    model = embeddings.get_model()
    features = model.preprocess(["The travel desk books hotels and trains.", "VPN"])
    assert features["input_ids"].shape[1] % 16 != 0
    padded = embeddings._pad_to_multiple(features, 16, pad_id=model.tokenizer.pad_token_id)
    assert padded["input_ids"].shape[1] % 16 == 0 and padded["input_ids"].shape[1] > features["input_ids"].shape[1]
    assert int(padded["attention_mask"].sum()) == int(features["attention_mask"].sum())
    assert embeddings._pad_to_multiple(padded, 16, pad_id=0) is padded  # already a multiple: left alone
    with torch.inference_mode():
        plain = model(features)["sentence_embedding"]
        longer = model(padded)["sentence_embedding"]
    assert torch.allclose(plain, longer, atol=1e-5), "padded positions are out of attention and pooling"


@pytest.mark.parametrize(
    ("setting", "units", "expected"),
    [
        ("auto", True, "bfloat16"),
        ("auto", False, "float32"),
        ("float32", True, "float32"),
        ("bfloat16", False, "bfloat16"),
    ],
)
def test_auto_precision_is_bfloat16_only_where_the_cpu_has_bfloat16_units(
    monkeypatch, settings, setting, units, expected
):
    monkeypatch.setattr(embeddings, "_cpu_has_bfloat16_units", lambda: units)
    settings.KB_EMBEDDING_PRECISION = setting
    assert embeddings.precision() == expected


@pytest.mark.parametrize(
    ("backend", "int8", "agreement"),
    [("torch", False, 0.9995), ("openvino", False, 0.9995), ("openvino", True, 0.995)],
)
def test_bfloat16_vectors_are_interchangeable_with_float32_ones(settings, backend, int8, agreement):
    """An index embedded under one precision is searched with questions embedded under the other (a setting
    changed, a worker on another CPU), whatever runs the bfloat16 passes: the vectors must agree far closer than
    any ranking margin (int8's within 0.998 on SciFact's abstracts: settings.KB_EMBEDDING_INT8)."""
    settings.KB_EMBEDDING_BACKEND = backend
    settings.KB_EMBEDDING_INT8 = int8
    texts = [
        "How many days of annual leave do I get after five years?",
        "Employees accrue 2.08 days of annual leave per month; after five years of service the entitlement "
        "rises to 28 days a year, and up to five unused days may be carried into the next year. " * 2,
        "VPN",
    ]
    settings.KB_EMBEDDING_PRECISION = "float32"
    exact = embeddings.embed(texts)
    settings.KB_EMBEDDING_PRECISION = "bfloat16"
    fast = embeddings.embed(texts)
    assert fast.dtype == np.float32 and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (fast * exact).sum(axis=1).min() > agreement
    assert not np.array_equal(fast[1], exact[1]), "the passage went through the bfloat16 path"
    assert (embeddings._openvino is not None) is (backend == "openvino")
    if backend == "openvino":
        settings.KB_EMBEDDING_INT8 = not int8
        assert not np.array_equal(embeddings.embed(texts)[1], fast[1]), "the setting changes the compiled model"


def test_auto_runs_the_bfloat16_passes_in_openvino(settings):
    settings.KB_EMBEDDING_BACKEND = "auto"
    settings.KB_EMBEDDING_PRECISION = "bfloat16"
    assert embeddings.backend() == "openvino"
    settings.KB_EMBEDDING_PRECISION = "float32"
    assert embeddings.backend() == "torch"  # no bfloat16 passes to run


def test_openvinos_converter_reports_nothing_over_the_network(settings):
    settings.KB_EMBEDDING_BACKEND = "openvino"
    settings.KB_EMBEDDING_PRECISION = "bfloat16"
    embeddings.embed(["A passage long enough for the bfloat16 path, about travel and expenses. " * 6])
    assert embeddings._openvino is not None
    from openvino.tools.ovc import convert_impl

    assert convert_impl.tm.__name__ == "openvino.tools.ovc.telemetry_stub"  # not the openvino_telemetry package


def test_int8_weights_are_stored_as_int8_and_restore_to_the_originals():
    """Every Linear layer's weights of the converted transformer become uint8 with a per-channel zero point and
    scale, and what the restoring subgraph gives back is within half a step of each original weight."""
    converted = embeddings._openvino_converted(embeddings.get_model())
    import openvino  # after the conversion, which keeps OpenVINO's telemetry out first

    originals = {
        op.get_friendly_name(): source.get_data().copy()
        for op in converted.get_ordered_ops()
        if op.get_type_name() == "MatMul"
        and (source := op.input(1).get_source_output().get_node()).get_type_name() == "Constant"
    }
    assert len(originals) >= 36  # six layers of query, key, value, output and two feed-forward
    embeddings._int8_weights(converted)
    matmuls = [op for op in converted.get_ordered_ops() if op.get_friendly_name() in originals]
    for matmul in matmuls:
        multiply = matmul.input(1).get_source_output().get_node()
        subtract, scale = (i.get_source_output().get_node() for i in multiply.inputs())
        converts = (i.get_source_output().get_node() for i in subtract.inputs())
        stored, zero = (convert.input(0).get_source_output().get_node() for convert in converts)
        assert stored.get_output_element_type(0) == openvino.Type.u8
        restored = (stored.get_data().astype(np.float32) - zero.get_data()) * scale.get_data()
        original = originals[matmul.get_friendly_name()]
        assert np.all(np.abs(restored - original) <= scale.get_data() / 2 + 1e-6)
    with pytest.raises(ValueError, match="no matrix product"):
        embeddings._int8_weights(converted)  # nothing left in float32 to store: said, so that bfloat16 stays


def test_when_openvino_cannot_run_the_model_torch_does(settings, monkeypatch, caplog):
    def refuse(model, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(embeddings, "_openvino", None)  # this process's compiled model is made again afterwards
    monkeypatch.setattr(embeddings, "_openvino_made_for", None)
    text = ["A passage long enough for the bfloat16 path, about travel and expenses. " * 6]
    settings.KB_EMBEDDING_PRECISION = "bfloat16"
    settings.KB_EMBEDDING_BACKEND = "torch"
    by_torch = embeddings.embed(text)
    monkeypatch.setattr(embeddings, "_OpenVINOPass", refuse)
    settings.KB_EMBEDDING_BACKEND = "openvino"
    assert np.array_equal(embeddings.embed(text), by_torch)
    assert embeddings._openvino is None
    assert "OpenVINO could not run it: unsupported operation" in caplog.text


def test_a_question_sized_pass_stays_in_float32(settings):
    """Under BFLOAT16_MIN_TOKENS the matrix units do not pay: a question is embedded exactly as in float32."""
    question = ["Can I carry unused leave into next year?"]
    settings.KB_EMBEDDING_PRECISION = "float32"
    exact = embeddings.embed(question)
    settings.KB_EMBEDDING_PRECISION = "bfloat16"
    assert np.array_equal(embeddings.embed(question), exact)


@pytest.mark.parametrize(
    ("cores", "processes", "setting", "expected"), [(2, 2, 0, 1), (8, 2, 0, 4), (2, 3, 0, 1), (2, 2, 3, 3)]
)
def test_worker_processes_share_the_cores_unless_told(monkeypatch, settings, cores, processes, setting, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings.KB_WORKER_TORCH_THREADS = setting
    assert worker_torch_threads(processes) == expected


def test_a_pair_is_read_as_one_input_in_unit_length_and_a_long_second_text_is_cut():
    question = "What is the hotel limit in Amsterdam?"
    answer = "The hotel limit in Amsterdam is 180 euros a night."
    pairs = embeddings.embed_pairs([question, question, answer], [answer, "The canteen opens at noon.", question])
    assert pairs.shape == (3, embeddings.get_model().get_embedding_dimension())
    np.testing.assert_allclose(np.linalg.norm(pairs, axis=1), 1.0, rtol=1e-5)
    # Neither text's own vector nor their mean: the model attends across the two, in order.
    alone = embeddings.embed([question, answer])
    assert float(pairs[0] @ alone[0]) < 0.99 and float(pairs[0] @ alone[1]) < 0.99
    assert float(pairs[0] @ pairs[2]) < 0.999
    assert float(pairs[0] @ pairs[1]) < float(pairs[0] @ pairs[0]) - 0.01
    # A pair in a batch with others gets the vector it gets alone.
    alone_pair = embeddings.embed_pairs([question], ["The canteen opens at noon."])[0]
    np.testing.assert_allclose(pairs[1], alone_pair, atol=1e-5)
    long = embeddings.embed_pairs([question], [" ".join(["The hotel limit is 180 euros a night."] * 400)])
    assert long.shape == (1, pairs.shape[1]) and np.isfinite(long).all()


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, True), (False, True, True), ("raises", True, True), (False, False, False)],
)
def test_bfloat16_units_are_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    import torch

    def probe(value):
        def answer():
            if value == "raises":
                raise RuntimeError("probe failed")
            return value

        return answer

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", probe(amx), raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", probe(avx512_bf16), raising=False)
    embeddings._cpu_has_bfloat16_units.cache_clear()
    try:
        assert embeddings._cpu_has_bfloat16_units() is expected
    finally:
        embeddings._cpu_has_bfloat16_units.cache_clear()
