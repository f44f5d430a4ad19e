"""Rerank clients: ``/rerank`` (Cohere/Jina shape) and ``/score`` for a Qwen3-VL-Reranker server.

The query and documents are the upstream multimodal dicts (``text``/``image``/``video``); each
side is turned into content parts by ``inputs`` (ordered videos, images, texts, "NULL" when
empty) and its media are sent at the reference's final pixels, exactly as the embedding client
does. The instruction travels as the request's ``instruction`` and is rendered by the packaged
score template. Large document lists are split into chunks sent concurrently; results are
merged, sorted and cut to ``top_n`` here, so indices always refer to the caller's list.

Example::

    from qwen3vl_vllm import RerankClient
    client = RerankClient(base_url="http://127.0.0.1:8001/v1")
    for hit in client.rerank({"text": "a cat"}, [{"text": "a dog"}, {"image": "cat.png"}], top_n=1):
        print(hit.index, hit.relevance_score)
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from qwen3vl_vllm.prompts.inputs import rerank_request
from qwen3vl_vllm.clients.embedding import _AsyncClient, _Client
from qwen3vl_vllm.clients.messages import openai_parts
from qwen3vl_vllm.errors import InputError


@dataclass(frozen=True)
class RerankResult:
    index: int
    relevance_score: float
    document: Any = None


def _prepared(client, query, documents, instruction, top_n, fps, max_frames):
    """(request, query content, document contents). Over-long pairs are cut by the server,
    exactly as the reference cuts them (``score_truncation``), so nothing is fitted here."""
    raw = {"query": query, "documents": documents}
    if instruction is not None:
        raw["instruction"] = instruction
    if fps is not None:
        raw["fps"] = fps
    if max_frames is not None:
        raw["max_frames"] = max_frames
    req = rerank_request(raw, settings=client._s.settings)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)
                              or not 1 <= top_n <= len(req.documents)):
        raise InputError("top_n", f"must be between 1 and {len(req.documents)} (the number of "
                                  f"documents), got {top_n!r}", "Leave it out to get every document")
    policy, settings = client._s.policy, client._s.settings
    q = {"content": openai_parts(req.query, "query", policy, settings)}
    docs = [{"content": openai_parts(d, f"documents[{i}]", policy, settings)}
            for i, d in enumerate(req.documents)]
    return req, q, docs


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def _ranked(scores: list[float], documents: Sequence[Any], top_n: int | None,
            return_documents: bool) -> list[RerankResult]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n is not None:
        order = order[:top_n]
    return [RerankResult(i, scores[i], documents[i] if return_documents else None) for i in order]


def _body(path: str, model: str, req, q: dict, docs: list, chunk: range) -> dict:
    key = "query" if path == "/rerank" else "queries"
    return {"model": model, key: q, "documents": [docs[i] for i in chunk],
            "instruction": req.instruction}


def _parse(path: str, resp: Any, chunk: range) -> list[tuple[int, float]]:
    items = resp["results"] if path == "/rerank" else resp["data"]
    field = "relevance_score" if path == "/rerank" else "score"
    if len(items) != len(chunk) or sorted(r["index"] for r in items) != list(range(len(chunk))):
        raise InputError("documents", f"server answered {len(items)} scores for {len(chunk)} "
                         "documents", "Check that the server serves a reranker")
    return [(chunk[r["index"]], float(r[field])) for r in items]


def _collect(pairs: list[tuple[int, float]], n: int) -> list[float]:
    """Scores in document order; every document must have exactly one (shared by both twins)."""
    scores: list[float | None] = [None] * n
    for i, s in pairs:
        scores[i] = s
    if len(pairs) != n or any(s is None for s in scores):
        raise InputError("documents", f"server answered {len(pairs)} scores for {n} documents",
                         "Check that the server serves a reranker and that top_n is not set on it")
    return scores


class RerankClient(_Client):
    """Scores from a qwen3vl-vllm reranker server, identical to the reference."""

    chunk_size = 32

    def _scores(self, path: str, query, documents, instruction, fps, max_frames, top_n=None):
        req, q, docs = _prepared(self, query, documents, instruction, top_n, fps, max_frames)
        model = self.model

        def one(chunk: range):
            where = f"documents[{chunk.start}:{chunk.stop}]"
            return _parse(path, self._call(path, _body(path, model, req, q, docs, chunk), where), chunk)

        chunks = _chunks(len(docs), self.chunk_size)
        with ThreadPoolExecutor(max_workers=min(self._s.max_concurrency, len(chunks))) as pool:
            return _collect([p for part in pool.map(one, chunks) for p in part], len(docs))

    def rerank(self, query: Mapping[str, Any], documents: Sequence[Mapping[str, Any]], *,
               instruction: str | None = None, top_n: int | None = None,
               return_documents: bool = False, fps: float | None = None,
               max_frames: int | None = None) -> list[RerankResult]:
        """Documents sorted by relevance (ties by index), each with its original index."""
        scores = self._scores("/rerank", query, documents, instruction, fps, max_frames, top_n)
        return _ranked(scores, documents, top_n, return_documents)

    def score(self, query: Mapping[str, Any], documents: Sequence[Mapping[str, Any]], *,
              instruction: str | None = None, fps: float | None = None,
              max_frames: int | None = None) -> list[float]:
        """One score in [0, 1] per document, in input order (``/score``)."""
        return self._scores("/score", query, documents, instruction, fps, max_frames)


class AsyncRerankClient(_AsyncClient):
    """The async twin of ``RerankClient``."""

    chunk_size = 32

    async def _scores(self, path, query, documents, instruction, fps, max_frames, top_n=None):
        req, q, docs = _prepared(self, query, documents, instruction, top_n, fps, max_frames)
        model = await self.model()
        sem = asyncio.Semaphore(self._s.max_concurrency)

        async def one(chunk: range):
            async with sem:
                resp = await self._call(path, _body(path, model, req, q, docs, chunk),
                                        f"documents[{chunk.start}:{chunk.stop}]")
            return _parse(path, resp, chunk)

        parts = await asyncio.gather(*(one(c) for c in _chunks(len(docs), self.chunk_size)))
        return _collect([p for part in parts for p in part], len(docs))

    async def rerank(self, query, documents, *, instruction=None, top_n=None,
                     return_documents=False, fps=None, max_frames=None) -> list[RerankResult]:
        scores = await self._scores("/rerank", query, documents, instruction, fps, max_frames, top_n)
        return _ranked(scores, documents, top_n, return_documents)

    async def score(self, query, documents, *, instruction=None, fps=None, max_frames=None):
        return await self._scores("/score", query, documents, instruction, fps, max_frames)
