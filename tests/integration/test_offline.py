"""Offline vLLM (Qwen3VLEmbedder) vs the transformers reference on the tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cases import mixed_batch, parity_cases

pytestmark = pytest.mark.slow
TOL = 0.999999  # fp32, tiny checkpoint: measured parity is <= 5e-7


CASE_NAMES = list(parity_cases(Path("/tmp/qwen3vl-case-names")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_offline_parity(case, offline_results, reference_embedder):
    data, _, media = offline_results
    ref = reference_embedder.process([parity_cases(media)[case]])[0]
    got = data[f"case/{case}"]
    assert got.shape == ref.shape
    cos = float(np.dot(got, ref) / (np.linalg.norm(got) * np.linalg.norm(ref)))
    print(f"PARITY offline {case}: cosine {cos:.7f}")
    assert cos >= TOL, f"{case}: cosine {cos}"


def test_offline_dimensions_are_truncate_then_l2(offline_results):
    data, _, _ = offline_results
    raw = data["raw/text"]
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3, "normalize=False must return the raw vector"
    expected = raw[:32] / np.linalg.norm(raw[:32])
    assert np.abs(data["dim32/text"] - expected).max() <= 1e-5


def test_offline_mixed_batch_order(offline_results, reference_embedder):
    data, _, media = offline_results
    got = data["mixed32"]
    ref = reference_embedder.process(mixed_batch(media), batch_size=8)
    assert got.shape == (32, ref.shape[1])
    cos = (got * ref).sum(axis=1)
    assert cos.min() >= TOL, cos
    # order: each row is closest to its own reference row
    assert (np.argmax(got @ ref.T, axis=1) == np.arange(32)).all()


def test_offline_bad_item_is_typed_and_named(offline_results):
    _, errors, _ = offline_results
    assert errors["bad_item"].startswith("MediaError: inputs[1].image[0]"), errors["bad_item"]
    assert "decode" in errors["bad_item"]


def test_offline_bad_dimensions(offline_results):
    _, errors, _ = offline_results
    assert errors["bad_dimensions"].startswith("InputError: dimensions"), errors["bad_dimensions"]
    assert "between 1 and 64" in errors["bad_dimensions"]


def test_offline_int8_round_trip(offline_results):
    from qwen3vl_vllm.quantize import INT8_BOUND, dequantize_int8

    data, _, _ = offline_results
    q = data["int8/text"]
    assert q.dtype == np.int8
    full = data["case/text"]
    assert np.abs(dequantize_int8(q) - full).max() <= INT8_BOUND + 1e-6


def test_offline_bad_input_matrix(offline_results, tmp_path):
    from test_bad_inputs import client_cases

    data, errors, _ = offline_results
    for name, (_, exc, fragment) in client_cases(tmp_path).items():
        got = errors[f"matrix/{name}"]
        assert got.startswith(exc.__name__ + ": "), (name, got)
        # the offline API names the item by its position in the batch: inputs[1]
        assert fragment.replace("inputs[0]", "inputs[1]") in got, (name, got)
    over = errors["matrix/text over max length"]
    assert over.startswith("InputError: inputs[0]") and "8192" in over, over
    # the engine still answers correctly afterwards
    assert float(np.dot(data["after_matrix"], data["case/text"])) > 0.99999
