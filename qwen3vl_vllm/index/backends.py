"""Where an index job's vectors are computed: ``local`` (the offline engine) or ``servers``.

A backend turns one chunk's rows into one result per row, in order: ``{"vector", "prompt_tokens",
"video_frames"}`` or ``{"error", "error_type"}`` for an item that cannot be embedded (the job
goes on). Errors that are not an item's (a server down after its retries, the engine dead)
raise: the job stops there and a rerun resumes it. Prompts and media are the offline API's and
the client's (``Qwen3VLEmbedder.prompts``/``embed_prompts``, ``EmbeddingClient.embed_each``):
nothing here builds a prompt or reads a pixel. The ``ray`` backend (``ray_backend``) runs the
local one inside Ray actors.

Example::

    backend = LocalBackend(JobSettings(model="/path/to/Qwen3-VL-Embedding-2B"))
    results = backend.embed([{"text": "a cat"}], places=["row 0 (id 'cat')"])
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from qwen3vl_vllm.errors import JobError


@dataclass(frozen=True)
class JobSettings:
    """Everything that decides an index job's vectors, and how the engine is started.

    ``instruction`` is the default for items without their own; ``fps``/``max_frames`` and the
    pixel bounds likewise (``MediaSettings``). ``engine`` holds extra ``vllm.LLM`` arguments
    (``max_model_len``, ``gpu_memory_utilization``...)."""

    model: str
    dtype: str | None = None
    instruction: str | None = None
    dimensions: int | None = None
    precision: str = "float32"
    normalize: bool = True
    truncate: bool = False
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    video_fit: str | None = None
    engine: dict = field(default_factory=dict)

    def media_settings(self):
        from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, MediaSettings

        given = {k: getattr(self, k) for k in ("min_pixels", "max_pixels", "total_pixels", "fps",
                                              "max_frames") if getattr(self, k) is not None}
        return MediaSettings(**{**asdict(DEFAULT_SETTINGS), **given})

    def fingerprint(self) -> dict:
        """The settings that decide the vectors, resolved to their values (a default given
        explicitly is the same job as the default left out)."""
        from qwen3vl_vllm.index.plan import VECTOR_ENGINE_KEYS, model_identity
        from qwen3vl_vllm.prompts.inputs import format_instruction
        from qwen3vl_vllm.prompts.video_fit import mode

        fp = {**model_identity(self.model), "dtype": self.dtype or "auto",
              "instruction": format_instruction(self.instruction),
              "dimensions": self.dimensions, "precision": self.precision,
              "normalize": self.normalize, "truncate": self.truncate,
              "video_fit": mode(self.video_fit), **asdict(self.media_settings())}
        for key in VECTOR_ENGINE_KEYS:
            if key in self.engine and key != "dtype":
                fp[f"engine.{key}"] = self.engine[key]
        return fp

    def item(self, item: dict) -> dict:
        """The item as the backend embeds it: the job's instruction where it has none."""
        if self.instruction is not None and "instruction" not in item:
            return {**item, "instruction": self.instruction}
        return item


def places(chunk: Any) -> tuple[list[dict], list[str]]:
    """A chunk's readable rows as (items, their places: ``row 17 (id 'cat.jpg')``), the two
    lists a backend's ``embed`` takes (rows that could not be read are the job's errors)."""
    from qwen3vl_vllm.index.source import Row

    good = [r for r in chunk.rows if isinstance(r, Row)]
    return [r.item for r in good], [f"row {r.row} (id {r.id!r})" for r in good]


def error_result(err: Exception, place: str) -> dict:
    """An item's error as a row of the errors table: the message with its position in the
    batch (``inputs[3]``: every error is one item's) replaced by the item's place in the source
    (``row 17 (id 'cat.jpg')``)."""
    message = re.sub(r"\binputs?\[\d+\]", lambda _: place, str(err))
    if place not in message:
        message = f"{place}: {message}"
    return {"error": message, "error_type": type(err).__name__}


def results(entries: Sequence[Any], places: Sequence[str]) -> list[dict]:
    """The offline API's and the client's per-item entries (an error, or ``(vector, info)``)
    as a backend's results."""
    out = []
    for entry, place in zip(entries, places, strict=True):
        if isinstance(entry, Exception):
            out.append(error_result(entry, place))
        else:
            vector, info = entry
            out.append({"vector": vector, "prompt_tokens": info["prompt_tokens"],
                        "video_frames": [[int(u), int(n)] for u, n in (info["video_frames"] or [])]})
    return out


class LocalBackend:
    """The offline engine in this process (every core, or the GPU vLLM finds)."""

    name = "local"

    def __init__(self, settings: JobSettings):
        from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder

        kwargs = dict(settings.engine)
        if settings.dtype is not None:
            kwargs["dtype"] = settings.dtype
        self.settings = settings
        self.model = Qwen3VLEmbedder(settings.model, settings=settings.media_settings(),
                                     video_fit=settings.video_fit, **kwargs)

    def embed(self, items: Sequence[dict], places: Sequence[str]) -> list[dict]:
        s = self.settings
        prompts = self.model.prompts([s.item(it) for it in items], truncate=s.truncate, errors="return")
        entries = self.model.embed_prompts(prompts, normalize=s.normalize, dimensions=s.dimensions)
        return results(entries, places)

    def close(self) -> None:
        self.model.close()


class ServersBackend:
    """N ``vllm serve`` replicas (or one Service in front of them): each chunk is split over
    the servers, each server gets at most ``concurrency`` requests at once (backpressure: the
    job sends the next chunk when this one is answered), retries are the client's, and a
    server that stays down hands its share to the others. Pixel and video settings are the
    servers' own (their config), so they are not sent."""

    name = "servers"

    def __init__(self, settings: JobSettings, urls: Sequence[str], *, api_key: str | None = None,
                 concurrency: int = 8, timeout: float | None = None, max_retries: int | None = None,
                 http_client: Any = None):
        """``http_client(url)``, when given, makes each server's ``httpx.Client`` (a test's
        ``MockTransport``, a proxy, mTLS)."""
        from qwen3vl_vllm.clients.embedding import EmbeddingClient

        if not urls:
            raise JobError("the servers backend needs at least one URL",
                           "Pass --servers http://host:8000/v1[,http://host2:8000/v1...]")
        self.settings = settings
        self.clients = [EmbeddingClient(base_url=u, api_key=api_key, model=settings.model,
                                        max_concurrency=concurrency, timeout=timeout,
                                        max_retries=max_retries,
                                        settings=settings.media_settings(),
                                        http_client=http_client(u) if http_client else None)
                        for u in urls]
        self.urls = list(urls)

    def _share(self, k: int, items: list[dict]) -> list:
        s = self.settings
        return self.clients[k].embed_each(items, dimensions=s.dimensions, truncate=s.truncate)

    def embed(self, items: Sequence[dict], places: Sequence[str]) -> list[dict]:
        from concurrent.futures import ThreadPoolExecutor

        from qwen3vl_vllm.errors import APIError

        s = self.settings
        items = [s.item(it) for it in items]
        n = len(self.clients)
        shares = {k: list(range(k, len(items), n)) for k in range(n)}
        entries: list = [None] * len(items)
        alive = list(range(n))
        last: Exception | None = None
        while shares:
            with ThreadPoolExecutor(max_workers=len(shares)) as pool:
                futures = {k: pool.submit(self._share, k, [items[i] for i in idx])
                           for k, idx in shares.items()}
            failed: list[int] = []
            for k, fut in futures.items():
                try:
                    got = fut.result()
                except (APIError, OSError) as e:  # the server, not the item: try another
                    last = e
                    failed.append(k)
                    continue
                for i, entry in zip(shares[k], got, strict=True):
                    entries[i] = entry
            alive = [k for k in alive if k not in failed]
            if failed and not alive:
                raise JobError(f"every server failed ({', '.join(self.urls)}); last: {last}",
                               "Check the servers, then run the same command again: it resumes")
            orphans = [i for k in failed for i in shares[k]]
            shares = {alive[j % len(alive)]: orphans[j::len(alive)] for j in range(min(len(alive), len(orphans)))}
        return results(entries, places)

    def close(self) -> None:
        for c in self.clients:
            c.close()
