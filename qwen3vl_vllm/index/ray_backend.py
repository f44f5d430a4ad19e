"""The ``ray`` backend: Ray Data over an actor pool, each actor holding one engine.

The driver (the job) plans the chunks and writes every finished one itself, so the output
folder needs to be on the driver only; the actors need the media (shared storage, URLs, or the
bytes inside a Parquet source, which travel in the items as ``data:`` URLs). Each pending
chunk is one row of a Ray dataset; ``map_batches`` sends it to an actor of the pool
(``LocalBackend`` inside, or ``ServersBackend`` with ``servers``), and the results stream back
to the driver in whatever order they finish. Ray Data restarts an actor that dies and retries
its task (``max_restarts=-1``, ``max_task_retries=-1``, its defaults for actor pools), so a
killed actor costs its chunk's time, not the job; a killed driver is a rerun, which resumes.

Not ``ray[llm]``: it pins an old vLLM and reaches into vLLM internals. Install with
``pip install 'qwen3vl-vllm[ray]'``.

Memory: the driver holds the pending chunks' items (paths, URLs and texts: about 100 bytes an
item) in Ray's object store; bytes-in-Parquet sources are better indexed in slices.

Example::

    run_index("s3-mounted/corpus.parquet", model="Qwen/Qwen3-VL-Embedding-8B", out="corpus.index",
              backend="ray", ray={"address": "auto", "actors": 8, "gpus": 1})
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from typing import Any, Callable, Iterable, Sequence

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index.backends import JobSettings

# environment the actors get from the driver (engine settings, offline caches, our own knobs)
ENV_PREFIXES = ("VLLM_", "QWEN3VL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_")


class ChunkActor:
    """One engine per actor; ``__call__`` embeds one chunk (a batch of one dataset row)."""

    def __init__(self, settings: dict, servers: Sequence[str] = (), api_key: str | None = None,
                 concurrency: int = 8):
        from qwen3vl_vllm.index.backends import LocalBackend, ServersBackend

        job = JobSettings(**settings)
        self.backend = (ServersBackend(job, servers, api_key=api_key, concurrency=concurrency)
                        if servers else LocalBackend(job))
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        out_index, out_result = [], []
        for index, payload in zip(batch["index"], batch["payload"]):
            items, places = pickle.loads(payload)
            results = self.backend.embed(items, places)
            for r in results:  # plain lists travel cheaper than arrays in object columns
                if "vector" in r:
                    r["vector"] = r["vector"].tolist()
            out_index.append(int(index))
            out_result.append(pickle.dumps({"results": results, "pid": self.pid}))
        return {"index": out_index, "result": out_result}


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise JobError("the ray backend needs Ray Data", "pip install 'qwen3vl-vllm[ray]'") from None
    return ray


def _init(ray, address: str | None) -> bool:
    """Connect (``address``, else ``RAY_ADDRESS``) or start a local cluster; True if this call
    started it (and so stops it)."""
    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": env} if env else None,
             ignore_reinit_error=True)
    return True


def run_chunks(chunks: Iterable, job: JobSettings, write: Callable[[Any, list], None], *,
               servers: Sequence[str] = (), api_key: str | None = None, concurrency: int = 8,
               address: str | None = None, actors: int | None = None, cpus: float | None = None,
               gpus: float | None = None) -> None:
    """Embed ``chunks`` on an actor pool; ``write(chunk, results)`` runs on the driver as each
    chunk comes back."""
    from qwen3vl_vllm.index.backends import places

    ray = _ray()
    started = _init(ray, address)
    try:
        by_index = {}
        rows = []
        for chunk in chunks:
            items, where = places(chunk)
            by_index[chunk.index] = chunk
            rows.append({"index": chunk.index, "payload": pickle.dumps((items, where))})
        if not rows:
            return
        cluster = ray.cluster_resources()
        if gpus is None and cpus is None:
            gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
            cpus = 1.0
        n = actors or max(1, int(cluster.get("GPU", 0) // gpus) if gpus else 1)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = False
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(ChunkActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n),
                            num_cpus=cpus or 0,
                            num_gpus=gpus or 0,
                            fn_constructor_kwargs={"settings": asdict(job), "servers": list(servers),
                                                   "api_key": api_key, "concurrency": concurrency})
        for row in ds.iter_rows():
            body = pickle.loads(row["result"])
            chunk = by_index.pop(int(row["index"]), None)
            if chunk is not None:  # a retried task's second answer: already written
                write(chunk, body["results"])
        if by_index:
            raise JobError(f"Ray returned no result for chunks {sorted(by_index)[:5]}",
                           "Run the same command again: it resumes")
    finally:
        if started:
            ray.shutdown()
