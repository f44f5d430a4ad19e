import numpy as np
import pytest

from qwen3vl_vllm.quantize import INT8_BOUND, dequantize_int8, quantize, unpack_bits


def _unit(n=16, d=100, seed=0):
    x = np.random.RandomState(seed).randn(n, d).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_round_trip_bound():
    x = _unit()
    q = quantize(x, "int8")
    assert q.dtype == np.int8
    assert np.abs(dequantize_int8(q) - x).max() <= INT8_BOUND + 1e-7
    cos = (dequantize_int8(q) * x).sum(1) / np.linalg.norm(dequantize_int8(q), axis=1)
    assert cos.min() > 0.999


def test_int8_rejects_unnormalised():
    with pytest.raises(ValueError, match="L2-normalised"):
        quantize(np.array([[3.0, 0.0]]), "int8")


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_round_trip_exact(precision):
    x = _unit(d=101)
    packed = quantize(x, precision)
    assert packed.shape == (16, 13)
    assert np.array_equal(unpack_bits(packed, 101, precision), (x > 0).astype(np.uint8))


def test_ubinary_layout():
    assert quantize(np.array([[0.6, -0.8, 0.0, 1.0]]), "ubinary").tolist() == [[0b10010000]]
    assert quantize(np.array([[0.6, -0.8, 0.0, 1.0]]), "binary").tolist() == [[0b10010000 - 128]]
