"""What the plugin's ASGI middlewares cost per request, on their own, in one process.

The account (``account.py``) cannot split sub-millisecond steps of the API server's event loop
(its sampler sees other threads when they let the GIL go), so the middlewares the plugin adds
to every server (``settings.MIDDLEWARES``: video-fit header, bad-item naming, body and decode
limits, the API key check) are timed here directly: the same POST ``/v1/embeddings`` request,
with a short text body and an API key, through a bare ASGI app and through that app wrapped in
the middlewares in vLLM's order, alternating rounds. Reported: CPU µs per request (median and
range) for each, and the difference. Written to JSON; nothing is asserted on speed.

    .venv/bin/python benchmarks/middleware_cost.py --out benchmarks/results/middleware-cost
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

KEY = "bench-key"
BODY = json.dumps({"model": "m", "input": "a short text of a few words", "encoding_format": "base64"}).encode()


async def app(scope, receive, send):
    """The app under the middlewares: reads the body, answers 200 with a small JSON."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})


def wrapped():
    """``app`` inside the plugin's middlewares, as ``--middleware`` adds them (the last listed
    is the outermost: the key check)."""
    from qwen3vl_vllm.serving.settings import MIDDLEWARES

    a = app
    for path in MIDDLEWARES:
        module, name = path.rsplit(".", 1)
        a = getattr(importlib.import_module(module), name)(a)
    return a


async def per_request_us(asgi, n: int) -> tuple[float, int]:
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()),
                         (b"authorization", f"Bearer {KEY}".encode())],
             "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "scheme": "http", "http_version": "1.1", "root_path": ""}
    statuses = []

    async def receive():
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    t0 = time.process_time()
    for _ in range(n):
        await asgi(dict(scope), receive, send)
    us = (time.process_time() - t0) / n * 1e6
    return us, sum(s == 200 for s in statuses)


def run(rounds: int, n: int) -> dict:
    before = os.environ.get("VLLM_API_KEY")
    os.environ["VLLM_API_KEY"] = KEY  # the server's key, for the whole measurement
    try:
        sides = {"bare": app, "middlewares": wrapped()}
        got: dict[str, list[float]] = {s: [] for s in sides}

        async def main():
            for r in range(rounds):
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    us, ok = await per_request_us(sides[side], n)
                    if ok != n:
                        raise RuntimeError(f"{side}: {n - ok} of {n} requests were not answered 200")
                    got[side].append(us)

        asyncio.run(main())
    finally:
        if before is None:
            os.environ.pop("VLLM_API_KEY", None)
        else:
            os.environ["VLLM_API_KEY"] = before
    summary = {s: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for s, v in got.items()}
    return {"rounds": rounds, "requests_per_round": n, "cpu_us_per_request": summary,
            "added_us_per_request": summary["middlewares"]["median"] - summary["bare"]["median"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=5000, help="requests per round")
    ap.add_argument("--out", default=str(HERE / "results" / "middleware-cost"))
    args = ap.parse_args(argv)
    res = run(args.rounds, args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "middleware_cost.json").write_text(json.dumps(res, indent=1))
    for side, row in res["cpu_us_per_request"].items():
        print(f"{side:12s} {row['median']:.1f} us CPU per request ({row['min']:.1f}-{row['max']:.1f})")
    print(f"added by the plugin's middlewares: {res['added_us_per_request']:.1f} us per request")
    print(f"[middleware_cost] wrote {out}/middleware_cost.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
