"""Search an index folder: top-k by vector, then (optionally) the reranker on those candidates.

The query is embedded with the settings the folder was made with (its manifest's model,
dtype, dimensions, pixel bounds), by the offline engine or, with ``model="http://..."``, by a
server. The nearest rows come from LanceDB when the job wrote it (``--store lancedb``), else
from an exact scan of the shards. ``rerank`` (a reranker checkpoint, or a server's base URL)
scores the query against each candidate's item, read from the shard (``item``), and reorders
them; ``candidates`` rows are retrieved for it (default: 3 x k).

Example::

    from qwen3vl_vllm.index import search
    for hit in search("photos.index", text="a red bicycle", k=5,
                      rerank="http://127.0.0.1:8001/v1"):
        print(hit.rank, hit.id, round(hit.score, 4), hit.rerank_score)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index.plan import Manifest
from qwen3vl_vllm.prompts.inputs import MEDIA_KEYS
# the job's engine arguments an offline reranker inherits (the machine's, not the model's)
SHARED_ENGINE_KEYS = ("enforce_eager", "gpu_memory_utilization", "max_num_seqs", "tensor_parallel_size")


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float  # cosine similarity (Hamming similarity for binary indexes)
    item: dict
    rerank_score: float | None = None


def _is_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(("http://", "https://"))


def _settings(fp: dict):
    from qwen3vl_vllm.prompts.inputs import MediaSettings

    return MediaSettings(**{k: fp[k] for k in ("min_pixels", "max_pixels", "total_pixels", "fps",
                                                "max_frames")})


def _engine_args(manifest: Manifest, engine: dict | None) -> dict:
    """The job's engine arguments, then the vector-deciding ones of its fingerprint, then the
    caller's."""
    fp = manifest.fingerprint
    kw = {**manifest.engine, **{k.split(".", 1)[1]: v for k, v in fp.items() if k.startswith("engine.")}}
    if fp.get("dtype") not in (None, "auto"):
        kw["dtype"] = fp["dtype"]
    return {**kw, **(engine or {})}


def embed_query(manifest: Manifest, query: dict, *, model: str | None, api_key: str | None,
                engine: dict | None):
    """The query's float32 vector (``query`` with its instruction), as the job embedded its rows."""
    fp = manifest.fingerprint
    item = query
    if _is_url(model):
        from qwen3vl_vllm.clients.embedding import EmbeddingClient

        with EmbeddingClient(base_url=model, api_key=api_key, settings=_settings(fp)) as client:
            return client.embed([item], dimensions=fp["dimensions"], truncate=fp["truncate"])[0]
    from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder

    with Qwen3VLEmbedder(model or fp["model"], settings=_settings(fp), video_fit=fp["video_fit"],
                         **_engine_args(manifest, engine)) as m:
        return m.process([item], dimensions=fp["dimensions"], truncate=fp["truncate"],
                         normalize=fp["normalize"])[0]


def rerank_scores(rerank: str, query: dict, documents: list[dict], *, instruction: str | None,
                  api_key: str | None, engine: dict | None, dtype: str | None,
                  inherited: dict | None = None) -> list[float]:
    if _is_url(rerank):
        from qwen3vl_vllm.clients.rerank import RerankClient

        with RerankClient(base_url=rerank, api_key=api_key) as client:
            return client.score(query, documents, instruction=instruction)
    from qwen3vl_vllm.offline.engines import Qwen3VLReranker

    kw = {**{k: v for k, v in (inherited or {}).items() if k in SHARED_ENGINE_KEYS}, **(engine or {})}
    if dtype not in (None, "auto"):
        kw.setdefault("dtype", dtype)
    inputs: dict = {"query": query, "documents": documents}
    if instruction is not None:
        inputs["instruction"] = instruction
    with Qwen3VLReranker(rerank, **kw) as r:
        return r.process(inputs)


def search(index: str | Path, *, text: str | None = None, image: str | None = None,
           query: dict | None = None, k: int = 10, rerank: str | None = None,
           candidates: int | None = None, model: str | None = None, api_key: str | None = None,
           rerank_instruction: str | None = None, engine: dict | None = None,
           rerank_engine: dict | None = None, embed: Any = None, score: Any = None) -> list[Hit]:
    """The ``k`` best rows of the index folder for a query (``text``, ``image`` or an upstream
    ``query`` dict), best first; with ``rerank``, ordered by the reranker's score.

    Example::

        hits = search("corpus.index", image="query.jpg", k=10, rerank="Qwen/Qwen3-VL-Reranker-2B")

    ``embed(query_item) -> vector`` and ``score(query, documents) -> scores`` replace the
    embedder and the reranker (tests, or engines already running in the caller).
    """
    out = Path(index).expanduser().resolve()
    manifest = Manifest.load(out)
    if manifest is None:
        raise JobError(f"{out} holds no index (no manifest.json)", "Run `qwen3vl-vllm index` first")
    if not manifest.complete:
        raise JobError(f"{out} is an unfinished index", "Run the same `qwen3vl-vllm index` command again to finish it")
    q = dict(query or {})
    if text is not None:
        q["text"] = text
    if image is not None:
        q["image"] = str(Path(image).expanduser().resolve()) if not _is_url(image) else image
    if not any(q.get(key) for key in MEDIA_KEYS):
        raise JobError("the query is empty", "Give --text, --image or a query dict")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise JobError(f"k must be a whole number >= 1, got {k!r}")
    item = {**q, "instruction": q.get("instruction", manifest.fingerprint["instruction"])}
    vector = embed(item) if embed is not None else embed_query(
        manifest, item, model=model, api_key=api_key, engine=engine)
    n = candidates or (3 * k if (rerank or score is not None) else k)
    if manifest.store.get("kind") == "lancedb" and manifest.fingerprint["precision"] == "float32":
        from qwen3vl_vllm.index.store import lancedb_search

        found = lancedb_search(out, vector, n)
    else:
        from qwen3vl_vllm.index.store import flat_search

        found = flat_search(out, vector, n, manifest.fingerprint["precision"])
    hits = [Hit(rank=i + 1, id=rid, score=score, item=json.loads(item))
            for i, (rid, score, item) in enumerate(found)]
    if (rerank or score is not None) and hits:
        docs = [{key: h.item[key] for key in MEDIA_KEYS if key in h.item} for h in hits]
        rq = {key: q[key] for key in MEDIA_KEYS if key in q}
        scores = score(rq, docs) if score is not None else rerank_scores(
            rerank, rq, docs, instruction=rerank_instruction, api_key=api_key,
            engine=rerank_engine, dtype=manifest.fingerprint.get("dtype"), inherited=manifest.engine)
        order = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
        hits = [Hit(rank=r + 1, id=hits[i].id, score=hits[i].score, item=hits[i].item,
                    rerank_score=float(scores[i])) for r, i in enumerate(order)]
    return hits[:k]


def _preview(item: dict, width: int = 48) -> str:
    bits = []
    for key in ("image", "video"):
        v = item.get(key)
        if isinstance(v, str):
            bits.append(f"[{key}] " + (v[:30] + "..." if v.startswith("data:") else Path(v).name))
        elif v is not None:
            bits.append(f"[{key}] ({len(v)} frames)" if key == "video" else f"[{key}]")
    if item.get("text"):
        t = item["text"] if isinstance(item["text"], str) else " ".join(item["text"])
        bits.append(" ".join(t.split()))
    s = " ".join(bits)
    return s if len(s) <= width else s[: width - 3] + "..."


def format_hits(hits: Sequence[Hit]) -> str:
    """The hits as a fixed-width table (what ``qwen3vl-vllm search`` prints)."""
    reranked = any(h.rerank_score is not None for h in hits)
    head = ["rank", "id", "cosine"] + (["rerank"] if reranked else []) + ["item"]
    rows = [[str(h.rank), h.id, f"{h.score:.4f}"] + ([f"{h.rerank_score:.4f}"] if reranked else [])
            + [_preview(h.item)] for h in hits]
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def hits_json(hits: Sequence[Any]) -> str:
    return json.dumps([h.__dict__ for h in hits], ensure_ascii=False)
