"""Serving throughput: an async load generator against a running server.

Modes: ``http`` (prebuilt request bodies over raw HTTP) and ``client`` (the project's async
client, media preprocessing included). Per concurrency level: requests/s, items/s, prompt
tokens/s, p50/p90/p99 latency, failed requests, and the server's peak memory (RSS of its whole
process tree, sampled). Request loops are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np


class PeakMemory:
    """Samples the RSS of a process tree in a thread; ``peak_mib`` after ``stop()``."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    @property
    def peak_mib(self) -> float:
        return self.peak / 2 ** 20


async def _run(send, n_requests: int, concurrency: int, rate: float | None, deadline_s: float):
    latencies, failures, tokens, items = [], [], 0, 0
    queue: asyncio.Queue = asyncio.Queue()
    for k in range(n_requests):
        queue.put_nowait(k)
    t_start = time.monotonic()
    deadline = t_start + deadline_s

    async def worker():
        nonlocal tokens, items
        while time.monotonic() < deadline:
            try:
                k = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:
                await asyncio.sleep(max(0.0, t_start + k / rate - time.monotonic()))
            t0 = time.monotonic()
            try:
                n_items, n_tokens = await send(k)
                latencies.append(time.monotonic() - t0)
                items += n_items
                tokens += n_tokens
            except Exception as e:  # noqa: BLE001 - counted, reported, fails the run
                failures.append(f"{type(e).__name__}: {str(e)[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - t_start
    unsent = queue.qsize()
    return latencies, failures + ["not sent before the deadline"] * unsent, tokens, items, wall


def level(send_factory, *, n_requests: int, concurrency: int, rate: float | None = None,
          deadline_s: float = 600.0) -> dict:
    async def main():
        send, close = await send_factory()
        try:
            return await _run(send, n_requests, concurrency, rate, deadline_s)
        finally:
            await close()

    latencies, failures, tokens, items, wall = asyncio.run(main())
    pct = (lambda q: float(np.percentile(latencies, q) * 1000)) if latencies else (lambda q: float("nan"))
    return {"concurrency": concurrency, "rate": rate, "requests": n_requests,
            "answered": len(latencies), "failed": len(failures), "failures": failures[:5],
            "seconds": wall, "requests_per_s": len(latencies) / wall, "items_per_s": items / wall,
            "tokens_per_s": tokens / wall, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}


def http_sender(url: str, path: str, bodies: list[dict], items_per_request: int, timeout: float = 120):
    async def factory():
        import httpx

        client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=256))

        async def send(k: int):
            r = await client.post(url + path, json=bodies[k % len(bodies)])
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            usage = r.json().get("usage") or {}
            return items_per_request, int(usage.get("prompt_tokens", 0))

        return send, client.aclose

    return factory


def client_sender(base_url: str, kind: str, inputs, timeout: float = 120):
    async def factory():
        from qwen3vl_vllm import AsyncEmbeddingClient, AsyncRerankClient

        if kind == "embedding":
            client = AsyncEmbeddingClient(base_url=base_url, timeout=timeout, max_retries=0)

            async def send(k: int):
                await client.embed([inputs[k % len(inputs)]])
                return 1, 0
        else:
            client = AsyncRerankClient(base_url=base_url, timeout=timeout, max_retries=0)

            async def send(k: int):  # inputs: a list of {"query", "documents"} sets
                x = inputs[k % len(inputs)]
                await client.score(x["query"], x["documents"])
                return len(x["documents"]), 0

        return send, client.close

    return factory
