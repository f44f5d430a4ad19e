"""The index folder as something to search: a LanceDB table, or the shards themselves (flat).

``build_lancedb`` writes ``DIR/lancedb`` (embedded: no server), table ``items`` with ``id``,
``row``, ``vector`` (float32, fixed size) and ``item``, rebuilt from the shards at the end of a
job. From ``ANN_MIN_ROWS`` rows on it gets an approximate index (IVF + HNSW over 8-bit scalar
quantised vectors, cosine); below that a flat search is exact and fast enough, and an ANN
index would have too few rows to train on. ``load_flat`` reads the shards for a flat search
without LanceDB (every precision: float32, int8 dequantised, binary by Hamming similarity).

Example::

    import lancedb
    table = lancedb.connect("corpus.index/lancedb").open_table("items")
    hits = table.search(query_vector).metric("cosine").limit(10).to_list()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index import parts

LANCEDB_DIR = "lancedb"
TABLE = "items"
ANN_MIN_ROWS = 5000  # below this the table is searched exactly (flat)


def _lancedb():
    try:
        import lancedb
    except ImportError:
        raise JobError("--store lancedb needs LanceDB", "pip install 'qwen3vl-vllm[index]'") from None
    return lancedb


def build_lancedb(out: Path, *, log: Callable[[str], Any] = print) -> dict:
    """(Re)write ``DIR/lancedb`` from the vectors shards; returns what the manifest records."""
    import pyarrow as pa

    lancedb = _lancedb()
    table = parts.read_columns(out, "vectors", ["row", "id", "vector", "item"])
    n = table.num_rows
    if n == 0:
        raise JobError(f"{out} has no vectors to put in LanceDB (every row is an error)")
    vec = table.column("vector").combine_chunks()
    width = len(vec[0])
    fixed = pa.FixedSizeListArray.from_arrays(vec.flatten().cast(pa.float32()), width)
    table = table.set_column(table.schema.get_field_index("vector"), "vector", fixed)
    db = lancedb.connect(str(out / LANCEDB_DIR))
    lt = db.create_table(TABLE, data=table, mode="overwrite")
    info = {"kind": "lancedb", "path": LANCEDB_DIR, "table": TABLE, "rows": n, "metric": "cosine"}
    if n >= ANN_MIN_ROWS:
        from lancedb.index import IvfHnswSq

        lt.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
        info["index"] = "IVF_HNSW_SQ"
    else:
        info["index"] = f"none (flat: fewer than {ANN_MIN_ROWS} rows)"
    log(f"LanceDB: {out / LANCEDB_DIR} table {TABLE!r}, {n} rows, index {info['index']}")
    return info


def lancedb_search(out: Path, query, k: int) -> list[tuple[str, float, str]]:
    """``(id, cosine similarity, item JSON)`` of the ``k`` nearest rows."""
    lancedb = _lancedb()
    table = lancedb.connect(str(out / LANCEDB_DIR)).open_table(TABLE)
    found = table.search(list(map(float, query))).metric("cosine").limit(k) \
        .select(["id", "item"]).to_list()
    return [(h["id"], 1.0 - float(h["_distance"]), h["item"]) for h in found]


def flat_search(out: Path, query, k: int, precision: str) -> list[tuple[str, float, str]]:
    """Exact top-``k`` over the shards: cosine for float32/int8 (vectors are L2-normalised
    when the job normalised them), ``1 - hamming / bits`` for binary/ubinary."""
    import numpy as np

    from qwen3vl_vllm.quantize import dequantize_int8, quantize, unpack_bits

    table = parts.read_columns(out, "vectors", ["row", "id", "vector"])
    if table.num_rows == 0:
        return []
    vec = table.column("vector").combine_chunks()
    width = len(vec[0])
    matrix = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    q = np.asarray(query, dtype=np.float32)
    if precision in ("binary", "ubinary"):
        bits = unpack_bits(matrix, q.size, precision).astype(np.int32)
        qbits = unpack_bits(quantize(q[None], precision), q.size, precision)[0].astype(np.int32)
        scores = 1.0 - np.abs(bits - qbits).sum(axis=1) / q.size
    else:
        m = dequantize_int8(matrix) if precision == "int8" else matrix.astype(np.float32)
        norms = np.linalg.norm(m, axis=1) * max(np.linalg.norm(q), 1e-12)
        scores = (m @ q) / np.maximum(norms, 1e-12)
    top = np.argsort(-scores, kind="stable")[:k]
    rows = table.column("row").to_numpy()[top]
    items = _items(out, rows)  # read for the hits only, not the whole corpus
    ids = table.column("id").to_pylist()
    return [(ids[i], float(scores[i]), items[int(r)]) for i, r in zip(top, rows)]


def _items(out: Path, rows) -> dict[int, str]:
    import pyarrow.dataset as ds

    found = ds.dataset(out / "vectors", format="parquet").to_table(
        columns=["row", "item"], filter=ds.field("row").isin([int(r) for r in rows]))
    return dict(zip(found.column("row").to_pylist(), found.column("item").to_pylist()))
