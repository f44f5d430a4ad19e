"""Compact vector formats: int8 and packed binary/ubinary.

Scheme (documented and tested):

- ``int8``: for L2-normalised vectors (every component in [-1, 1]): ``q = round(x * 127)``,
  clipped to [-127, 127]; ``dequantize_int8(q) = q / 127``. Round-trip error per component is at
  most ``0.5 / 127`` (about 0.0039).
- ``ubinary``: one bit per dimension, 1 where ``x > 0``, packed 8 per byte, most significant bit
  first (``numpy.packbits``): ``ceil(d / 8)`` uint8 per vector. ``unpack_bits`` restores the bits
  exactly.
- ``binary``: the same bytes as signed int8 (``ubinary - 128``), the sentence-transformers
  convention.

Example::

    >>> import numpy as np
    >>> from qwen3vl_vllm.quantize import quantize
    >>> quantize(np.array([[0.6, -0.8]]), "ubinary")
    array([[128]], dtype=uint8)
"""

from __future__ import annotations

PRECISIONS = ("float32", "int8", "binary", "ubinary")
INT8_SCALE = 127.0
INT8_BOUND = 0.5 / INT8_SCALE


def quantize(vectors, precision: str = "float32"):
    import numpy as np

    x = np.asarray(vectors, dtype=np.float32)
    if precision == "float32":
        return x
    if precision == "int8":
        if x.size and np.abs(x).max() > 1.0 + 1e-5:
            raise ValueError("int8 needs L2-normalised vectors (components in [-1, 1]); "
                             "use normalize=True or precision='float32'")
        return np.clip(np.rint(x * INT8_SCALE), -127, 127).astype(np.int8)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(x > 0, axis=-1)
        if precision == "ubinary":
            return packed
        return (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def dequantize_int8(q):
    import numpy as np

    return np.asarray(q, dtype=np.float32) / INT8_SCALE


def unpack_bits(packed, dim: int, precision: str = "ubinary"):
    """Packed bits -> 0/1 uint8 array of ``dim`` columns."""
    import numpy as np

    arr = np.asarray(packed)
    if precision == "binary":
        arr = (arr.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(arr.astype(np.uint8), axis=-1)[..., :dim]
