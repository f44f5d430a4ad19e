"""``run_index``: embed a corpus into a folder of Parquet shards, resumably, nothing lost.

The job plans the source in chunks (``plan``), skips the chunks a previous run finished,
sends the rest to a backend (``backends``, ``ray_backend``), and writes each finished chunk
atomically (``parts``). Kill it at any moment, SIGKILL of its process group included, and run
the same command again: it finishes without recomputing finished chunks. At the end it checks
that vectors + errors = the source's rows, each row once and every id once, prints that, and
records it in the manifest.

Example::

    from qwen3vl_vllm.index import run_index
    summary = run_index("photos/", model="Qwen/Qwen3-VL-Embedding-2B", out="photos.index")
    print(summary.vectors, summary.errors)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index import parts
from qwen3vl_vllm.index.backends import JobSettings, places
from qwen3vl_vllm.index.plan import (DEFAULT_CHUNK_SIZE, DUPLICATE, MANIFEST, Chunk, Manifest, check_resume,
                                     chunks, now, versions)
from qwen3vl_vllm.index.source import Row, RowError, open_source

BACKENDS = ("local", "servers", "ray")
STORES = (None, "lancedb")


@dataclass
class IndexSummary:
    """What a finished job holds (also in ``DIR/manifest.json``)."""

    out: Path
    inputs: int
    vectors: int
    errors: int
    chunks: int
    chunks_this_run: int
    seconds: float  # this run, engine start included
    items_per_s: float  # rows this run embedded, per second once the engine was up
    skipped: list = field(default_factory=list)
    first_errors: list = field(default_factory=list)  # the first few error messages, by row

    def text(self) -> str:
        # written only after verify(), which raises on any mismatch
        lines = [f"indexed {self.inputs} inputs: {self.vectors} vectors + {self.errors} errors "
                 f"= {self.vectors + self.errors} (ok); every row once, every id once",
                 f"chunks: {self.chunks} ({self.chunks - self.chunks_this_run} from earlier runs, "
                 f"{self.chunks_this_run} now); this run {self.seconds:.1f} s, "
                 f"{self.items_per_s:.1f} items/s once the engine was up",
                 f"out: {self.out} (vectors/*.parquet, errors/*.parquet, manifest.json)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} hidden entries: {', '.join(self.skipped[:5])}"
                         + (" ..." if len(self.skipped) > 5 else ""))
        if self.errors:
            lines.append(f"errors (all {self.errors} in errors/*.parquet), the first:")
            lines.extend(f"  {m}" for m in self.first_errors)
        return "\n".join(lines)


def _check_args(settings: JobSettings, chunk_size: int, backend: Any, store: str | None,
                servers: Sequence[str]) -> None:
    from qwen3vl_vllm.quantize import PRECISIONS

    if settings.precision not in PRECISIONS:
        raise JobError(f"precision must be one of {PRECISIONS}, got {settings.precision!r}")
    d = settings.dimensions
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
        raise JobError(f"dimensions must be a whole number >= 1, got {d!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise JobError(f"chunk_size must be a whole number >= 1, got {chunk_size!r}")
    if isinstance(backend, str) and backend not in BACKENDS:
        raise JobError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "servers" and not servers:
        raise JobError("the servers backend needs at least one URL",
                       "Pass --servers http://host:8000/v1[,http://host2:8000/v1...]")
    if servers and backend == "local":
        raise JobError("--servers was given with the local backend",
                       "Add --backend servers (or --backend ray to call them from Ray actors)")
    if store not in STORES:
        raise JobError(f"store must be 'lancedb' or none, got {store!r}")
    if store == "lancedb" and settings.precision != "float32":
        raise JobError("the LanceDB store holds float32 vectors",
                       "Use --precision float32 with --store lancedb (or load the shards yourself)")


def _plan(source, chunk_size: int, done: dict, out: Path) -> tuple[int, int, list[int]]:
    """(rows, chunks, pending chunk indices); a finished chunk whose rows changed refuses."""
    rows = n_chunks = 0
    pending = []
    for chunk in chunks(source, chunk_size):
        n_chunks += 1
        rows += len(chunk.rows)
        marker = done.get(chunk.index)
        if marker is None:
            pending.append(chunk.index)
        elif marker.digest != chunk.digest or marker.first_row != chunk.first_row:
            raise JobError(f"the source changed since an earlier run made {out}: chunk "
                           f"{chunk.index} (rows {chunk.first_row}-{chunk.first_row + len(chunk.rows) - 1}) "
                           "is not what it was", "Index the new source into another --out")
    extra = sorted(i for i in done if i >= n_chunks)
    if extra:
        raise JobError(f"the source has {rows} rows now, fewer than an earlier run indexed into {out} "
                       f"(chunk {extra[0]} exists)", "Index the new source into another --out")
    return rows, n_chunks, pending


def chunk_tables(chunk: Chunk, results: Sequence[dict], precision: str):
    """A chunk's rows and its backend results -> (vectors table, error rows)."""
    import numpy as np

    from qwen3vl_vllm.quantize import quantize

    errors = [{"row": r.row, "id": r.id, "item": parts.item_json(r.item), "error": r.message,
               "error_type": r.kind} for r in chunk.rows if isinstance(r, RowError)]
    good = [r for r in chunk.rows if isinstance(r, Row)]
    if len(results) != len(good):
        raise JobError(f"chunk {chunk.index}: {len(results)} results for {len(good)} items (a backend fault)")
    ok_rows, ok_vectors = [], []
    for r, res in zip(good, results):
        if "error" in res:
            errors.append({"row": r.row, "id": r.id, "item": parts.item_json(r.item),
                           "error": res["error"], "error_type": res["error_type"]})
        else:
            ok_rows.append((r, res))
            ok_vectors.append(np.asarray(res["vector"], dtype=np.float32))
    errors.sort(key=lambda e: e["row"])
    matrix = quantize(np.stack(ok_vectors), precision) if ok_vectors else np.zeros((0, 0), np.float32)
    table = parts.vector_table([r.row for r, _ in ok_rows], [r.id for r, _ in ok_rows], matrix,
                               [res["prompt_tokens"] for _, res in ok_rows],
                               [res["video_frames"] for _, res in ok_rows],
                               [parts.item_json(r.item) for r, _ in ok_rows], precision)
    return table, errors


def verify(out: Path, rows: int) -> tuple[int, int]:
    """Vectors + errors = rows, each row once, each id once; (vectors, errors) or JobError."""
    import numpy as np

    v = parts.read_columns(out, "vectors", ["row", "id"])
    e = parts.read_columns(out, "errors", ["row", "id", "error_type"])
    seen = np.concatenate([v.column("row").to_numpy(), e.column("row").to_numpy()]) \
        if v.num_rows + e.num_rows else np.zeros(0, dtype=np.int64)
    if v.num_rows + e.num_rows != rows or not np.array_equal(np.sort(seen), np.arange(rows)):
        raise JobError(f"{out}: {v.num_rows} vectors + {e.num_rows} errors for {rows} rows "
                       "(rows missing or repeated)", "Report this as a bug; rerunning redoes nothing")
    # a repeated id's later rows are error rows that carry it (error_type DuplicateId)
    ids = v.column("id").to_pylist() + [i for i, t in zip(e.column("id").to_pylist(),
                                                             e.column("error_type").to_pylist())
                                         if i is not None and t != DUPLICATE]
    if len(ids) != len(set(ids)):
        raise JobError(f"{out}: an id appears twice", "Report this as a bug")
    return v.num_rows, e.num_rows


def _make_backend(kind, settings: JobSettings, servers: Sequence[str], api_key, concurrency):
    from qwen3vl_vllm.index.backends import LocalBackend, ServersBackend

    if not isinstance(kind, str):
        return kind  # an object with embed(items, places) and close(): tests, custom engines
    if kind == "servers":
        return ServersBackend(settings, servers, api_key=api_key, concurrency=concurrency)
    return LocalBackend(settings)


def run_index(source: str | Path, *, model: str, out: str | Path, backend: Any = "local",
              servers: Sequence[str] = (), api_key: str | None = None, concurrency: int = 8,
              chunk_size: int = DEFAULT_CHUNK_SIZE, id_column: str = "id",
              store: str | None = None, progress: bool = True,
              ray: dict | None = None, log: Callable[[str], Any] | None = None,
              **settings: Any) -> IndexSummary:
    """Embed every row of ``source`` into ``out``; resume there if an earlier run stopped.

    ``settings`` are ``JobSettings`` fields (``dimensions``, ``precision``, ``instruction``,
    ``dtype``, ``truncate``, pixel and video bounds, ``engine`` for extra ``vllm.LLM``
    arguments). ``backend``: "local" (this machine's engine), "servers" (``servers``: base
    URLs of ``vllm serve`` replicas, ``model`` their served name) or "ray" (``ray``:
    ``{"address", "actors", "cpus", "gpus"}``), or an object with ``embed(items, places)`` and
    ``close()`` (see ``backends``). ``store="lancedb"`` also writes
    ``DIR/lancedb`` for ``search``. Raises ``JobError`` when it cannot start or resume.

    Example::

        run_index("corpus.jsonl", model="Qwen/Qwen3-VL-Embedding-2B", out="corpus.index",
                  dimensions=1024, precision="int8")
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if Path(model).expanduser().is_dir():  # a local checkpoint: the same folder from any cwd
        model = str(Path(model).expanduser().resolve())
    job = JobSettings(model=model, **settings)
    _check_args(job, chunk_size, backend, store, servers)
    out = Path(out).expanduser().resolve()
    src = open_source(source, id_column=id_column)
    fingerprint = job.fingerprint()
    old = Manifest.load(out) if out.exists() else None
    if old is not None:
        check_resume(old, fingerprint, src.describe(), chunk_size, out)
    elif out.exists() and any(out.iterdir()):
        raise JobError(f"{out} is not empty and holds no {MANIFEST}", "Give an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    parts.clean_partial(out)
    done = parts.finished(out)
    parts.drop_unfinished(out, done)
    rows, n_chunks, pending = _plan(src, chunk_size, done, out)
    manifest = old or Manifest(fingerprint=fingerprint, source=src.describe(), chunk_size=chunk_size)
    run = {"started": now(), "backend": backend if isinstance(backend, str) else type(backend).__name__,
           "pending_chunks": len(pending)}
    manifest.runs.append(run)
    manifest.complete, manifest.versions = False, versions()
    manifest.engine = {k: v for k, v in job.engine.items() if isinstance(v, (str, int, float, bool))}
    manifest.save(out)
    if done:
        log(f"resuming {out}: {len(done)} of {n_chunks} chunks done, {len(pending)} to go")

    t0 = time.monotonic()
    embedded, work_s = 0, 0.0
    if pending:
        embedded, work_s = _work(src, chunk_size, set(pending), rows - sum(d.rows for d in done.values()),
                         rows, job, backend, servers, api_key, concurrency, ray, out, progress, log)
    seconds = time.monotonic() - t0
    vectors, errors = verify(out, rows)
    store_info = {}
    if store == "lancedb":
        from qwen3vl_vllm.index.store import build_lancedb

        store_info = build_lancedb(out, log=log)
    run.update(finished=now(), seconds=round(seconds, 3), work_seconds=round(work_s, 3),
               rows_embedded=embedded, chunks_done=len(pending))
    manifest.counts = {"inputs": rows, "vectors": vectors, "errors": errors, "chunks": n_chunks}
    manifest.store = store_info or manifest.store
    manifest.complete = True
    manifest.save(out)
    summary = IndexSummary(out=out, inputs=rows, vectors=vectors, errors=errors, chunks=n_chunks,
                           chunks_this_run=len(pending), seconds=seconds,
                           items_per_s=embedded / work_s if work_s > 0 else 0.0,
                           skipped=list(src.skipped), first_errors=_first_errors(out))
    return summary


def _first_errors(out: Path, n: int = 5) -> list[str]:
    e = parts.read_columns(out, "errors", ["row", "error"])
    pairs = sorted(zip(e.column("row").to_pylist(), e.column("error").to_pylist()))
    return [m for _, m in pairs[:n]]


def _work(src, chunk_size, pending: set[int], todo_rows: int, rows: int, job: JobSettings,
          backend: str, servers, api_key, concurrency, ray, out: Path, progress: bool, log) -> int:
    """Run the pending chunks; returns (rows this run embedded, seconds from the first chunk
    handed to the backend, engine up, to the last one written)."""
    from tqdm import tqdm

    bar = tqdm(total=rows, initial=rows - todo_rows, unit="item", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, desc="index", smoothing=0.1)
    started: list[float] = []

    def todo():
        for c in chunks(src, chunk_size):
            if c.index in pending:
                if not started:
                    started.append(time.monotonic())
                yield c

    written = 0

    def write(chunk: Chunk, results: Sequence[dict]) -> None:
        nonlocal written
        table, errors = chunk_tables(chunk, results, job.precision)
        parts.write_chunk(out, chunk.index, chunk.digest, chunk.first_row, len(chunk.rows), table, errors)
        written += len(chunk.rows)
        bar.update(len(chunk.rows))

    try:
        if backend == "ray":
            from qwen3vl_vllm.index.ray_backend import run_chunks

            run_chunks(todo(), job, write, servers=servers, api_key=api_key,
                       concurrency=concurrency, **(ray or {}))
        else:
            engine = _make_backend(backend, job, servers, api_key, concurrency)
            try:
                for chunk in todo():
                    items, where = places(chunk)
                    write(chunk, engine.embed(items, where) if items else [])
            finally:
                engine.close()
    finally:
        bar.close()
    return written, (time.monotonic() - started[0]) if started else 0.0
