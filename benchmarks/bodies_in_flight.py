"""What many large requests at once cost a server's memory, with the body pool on and off.

Every request keeps its body in memory from upload to answer (the bytes, the parsed JSON,
vLLM's request), and vLLM takes any number at once (``serving/body_pool.py``). This starts a
tiny plugin embedding server once per side (``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT`` off, and at a
given size), sends the same burst of concurrent requests to each (each ``--texts`` texts of
``--chars`` characters, ``truncate_prompt_tokens: -1``), and records the API server's and the
whole tree's RSS before and at the peak (sampled every 0.1 s), the statuses, and the seconds
the burst took. Written to JSON; nothing is asserted.

    .venv/bin/python benchmarks/bodies_in_flight.py --out benchmarks/results/bodies-in-flight.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def run_side(ckpt: Path, limit: int, args, log: Path) -> dict:
    import httpx
    import psutil

    from qwen3vl_vllm.ops.launcher import ServerProcess, vllm_env

    env = {**vllm_env(), "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT": str(limit)}
    srv = ServerProcess(ckpt, extra_args=["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "16"],
                        env=env, log_path=log)

    def rss() -> tuple[float, float]:
        api = psutil.Process(srv.proc.pid)
        tree = [api] + api.children(recursive=True)
        return api.memory_info().rss / 1e6, sum(p.memory_info().rss for p in tree) / 1e6

    with srv:
        srv.wait_healthy()
        bodies = [json.dumps({"model": str(ckpt), "truncate_prompt_tokens": -1,
                              "input": [f"{i}-{j} " + "word " * (args.chars // 5) for j in range(args.texts)]}).encode()
                  for i in range(args.requests)]
        before = rss()
        peak = list(before)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                api, tree = rss()
                peak[0], peak[1] = max(peak[0], api), max(peak[1], tree)
                time.sleep(0.1)

        def post(body: bytes) -> int:
            try:
                return httpx.post(srv.url + "/v1/embeddings", content=body, timeout=args.timeout,
                                  headers={"content-type": "application/json"}).status_code
            except httpx.HTTPError as e:
                return type(e).__name__

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            statuses = list(pool.map(post, bodies))
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
    row = {"limit_bytes": limit, "requests": args.requests, "body_bytes": len(bodies[0]),
           "statuses": dict(collections.Counter(map(str, statuses))), "seconds": round(seconds, 2),
           "api_server_rss_mb": {"before": round(before[0]), "peak": round(peak[0]),
                                 "growth": round(peak[0] - before[0])},
           "tree_rss_mb": {"before": round(before[1]), "peak": round(peak[1]), "growth": round(peak[1] - before[1])}}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bodies-in-flight.json")
    ap.add_argument("--requests", type=int, default=32, help="concurrent requests in the burst")
    ap.add_argument("--texts", type=int, default=8, help="texts per request")
    ap.add_argument("--chars", type=int, default=2_000_000, help="characters per text")
    ap.add_argument("--limits", type=int, nargs="+", default=[0, 128 * 1024 * 1024],
                    help="QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT per side (0: off)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind="embedding", size="tiny")
    out = {"benchmark": "bodies_in_flight", "model": "tiny embedding (random weights)",
           "sides": [run_side(ckpt, limit, args, HERE.parent / ".cache" / "logs" / f"bodies-{limit}.log")
                     for limit in args.limits]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
