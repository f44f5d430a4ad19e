"""The output folder's files: one vectors shard, one errors shard and one marker per chunk.

``DIR/vectors/part-000012.parquet`` holds chunk 12's vectors (``row``, ``id``, ``vector``,
``prompt_tokens``, ``video_frames``, ``item``); ``DIR/errors/part-000012.parquet`` its error
rows (``row``, ``id``, ``item``, ``error``, ``error_type``); ``DIR/done/000012.json`` says the
chunk is finished (its digest and counts). Each file is written to a temporary name and renamed, errors first,
marker last: a job killed at any moment leaves either a finished chunk or none, and a rerun
redoes only the chunks without a marker. ``item`` is the upstream input as JSON (media as
absolute paths, URLs or ``data:`` URLs): search shows it and the reranker reads it.

Example::

    import pyarrow.dataset as ds
    table = ds.dataset("out/vectors", format="parquet").to_table()   # every vector
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3vl_vllm.errors import JobError

KINDS = ("vectors", "errors", "done")
VECTOR_TYPES = {"float32": "float32", "int8": "int8", "binary": "int8", "ubinary": "uint8"}


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise JobError("the index job writes Parquet, which needs pyarrow",
                       "pip install 'qwen3vl-vllm[index]'") from None
    return pa, pq


@dataclass
class Done:
    index: int
    digest: str
    vectors: int
    errors: int
    first_row: int
    rows: int


def path(out: Path, kind: str, index: int) -> Path:
    return out / kind / (f"{index:06d}.json" if kind == "done" else f"part-{index:06d}.parquet")


def _index(p: Path) -> int:
    return int(p.stem.rsplit("-", 1)[-1])


def clean_partial(out: Path) -> int:
    """Remove what a killed run left half-written (temporary files); the count removed."""
    n = 0
    for kind in KINDS:
        for p in (out / kind).glob(".*.tmp-*") if (out / kind).exists() else ():
            p.unlink(missing_ok=True)
            n += 1
    return n


def finished(out: Path) -> dict[int, Done]:
    d = out / "done"
    done = {}
    for p in sorted(d.glob("*.json")) if d.exists() else ():
        body = json.loads(p.read_text())
        done[body["index"]] = Done(**body)
    return done


def item_json(item: Any) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)


def vector_schema(precision: str):
    pa, _ = _pa()
    value = getattr(pa, VECTOR_TYPES[precision])()
    return pa.schema([("row", pa.int64()), ("id", pa.string()), ("vector", pa.list_(value)),
                      ("prompt_tokens", pa.int32()), ("video_frames", pa.list_(pa.list_(pa.int32()))),
                      ("item", pa.string())])


def error_schema():
    pa, _ = _pa()
    return pa.schema([("row", pa.int64()), ("id", pa.string()), ("item", pa.string()),
                      ("error", pa.string()), ("error_type", pa.string())])


def _write_table(table, path: Path) -> None:
    _, pq = _pa()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def vector_table(rows: list[int], ids: list[str], matrix, prompt_tokens: list, video_frames: list,
                 items: list[str], precision: str):
    """The vectors shard of a chunk; ``matrix`` is (n, width) in the stored precision."""
    import numpy as np

    pa, _ = _pa()
    schema = vector_schema(precision)
    n = len(rows)
    flat = np.ascontiguousarray(matrix).reshape(-1) if n else np.zeros(0, dtype=VECTOR_TYPES[precision])
    width = flat.size // n if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    vector = pa.ListArray.from_arrays(offsets, pa.array(flat.astype(VECTOR_TYPES[precision], copy=False)))
    return pa.Table.from_arrays(
        [pa.array(rows, pa.int64()), pa.array(ids, pa.string()), vector.cast(schema.field("vector").type),
         pa.array(prompt_tokens, pa.int32()), pa.array(video_frames, schema.field("video_frames").type),
         pa.array(items, pa.string())], schema=schema)


def write_chunk(out: Path, index: int, digest: str, first_row: int, n_rows: int,
                vectors, errors: list[dict]) -> Done:
    """Write one finished chunk (errors, vectors: an Arrow table, then the marker), each file
    atomically."""
    pa, _ = _pa()
    for kind in KINDS:
        (out / kind).mkdir(parents=True, exist_ok=True)
    _write_table(pa.Table.from_pylist(errors, schema=error_schema()), path(out, "errors", index))
    _write_table(vectors, path(out, "vectors", index))
    done = Done(index=index, digest=digest, vectors=vectors.num_rows, errors=len(errors),
                first_row=first_row, rows=n_rows)
    marker = path(out, "done", index)
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(done.__dict__))
    os.replace(tmp, marker)
    return done


def drop_unfinished(out: Path, done: dict[int, Done]) -> None:
    """Shards of chunks without a marker (the run was killed between the files): removed, so
    the folder never shows vectors that a rerun will write again."""
    for kind in ("vectors", "errors"):
        for p in (out / kind).glob("part-*.parquet") if (out / kind).exists() else ():
            if _index(p) not in done:
                p.unlink(missing_ok=True)


def read_columns(out: Path, kind: str, columns: list[str]):
    """Every ``kind`` ("vectors" or "errors") shard's ``columns``, as one Arrow table."""
    pa, pq = _pa()
    files = sorted((out / kind).glob("part-*.parquet"))
    tables = [pq.read_table(f, columns=columns) for f in files]
    if not tables:
        schema = vector_schema("float32") if kind == "vectors" else error_schema()
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)
