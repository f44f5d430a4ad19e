"""What long texts cost a server, with the request limits on (the defaults) and off.

vLLM tokenises a reranker's pairs and a ``/tokenize`` prompt whole, and pairs a rerank query
with every document, each pair tokenised on its own (``serving/request_limits.py``). This starts
a tiny plugin reranker twice, with the defaults and with ``QWEN3VL_MAX_TEXT_CHARS=0
QWEN3VL_MAX_REQUEST_TEXT_CHARS=0``, sends the same requests to each, one at a time, and records
per request: the status, its seconds, the server tree's RSS before and at its peak (sampled every
0.2 s), and how long a one-document rerank sent 1 s into it waited (vLLM tokenises on one
thread per API server). Written to JSON; nothing is asserted.

    .venv/bin/python benchmarks/text_limits.py --out benchmarks/results/text-limits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MI = 1024 * 1024


def cases(text_limit: int, request_limit: int) -> list[tuple[str, str, dict]]:
    """(what, path, body): each limit at and one over, and two requests well inside them."""
    q = 16384  # a query of 16 Ki characters paired with n one-character documents
    at = (request_limit - q) // (q + 1)
    return [
        ("document of 3 M characters", "/v1/rerank", {"query": "q", "documents": ["a" * (3 * MI)]}),
        ("document at the text limit", "/v1/rerank", {"query": "q", "documents": ["a" * text_limit]}),
        ("document one over it", "/v1/rerank", {"query": "q", "documents": ["a" * (text_limit + 1)]}),
        ("/tokenize prompt at the text limit", "/tokenize", {"prompt": "a" * text_limit}),
        ("300,000-character query x 40 documents", "/v1/rerank",
         {"query": "q" * 300_000, "documents": [f"d{i}" for i in range(40)]}),
        (f"16 Ki-character query x {at} documents (at the request limit)", "/v1/rerank",
         {"query": "q" * q, "documents": ["d"] * at}),
        (f"16 Ki-character query x {at + 2} documents (over it)", "/v1/rerank",
         {"query": "q" * q, "documents": ["d"] * (at + 2)}),
    ]


def run_side(ckpt: Path, env_extra: dict, repeats: int, log: Path) -> list[dict]:
    import httpx
    import psutil

    from qwen3vl_vllm.ops.launcher import ServerProcess, vllm_env
    from qwen3vl_vllm.serving.request_limits import DEFAULT_MAX_REQUEST_TEXT_CHARS, DEFAULT_MAX_TEXT_CHARS

    srv = ServerProcess(ckpt, extra_args=["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "16"],
                        env={**vllm_env(), **env_extra}, log_path=log)

    def rss() -> float:
        p = psutil.Process(srv.proc.pid)
        return sum(q.memory_info().rss for q in [p] + p.children(recursive=True)) / 1e6

    rows = []
    with srv:
        srv.wait_healthy()
        for what, path, body in cases(DEFAULT_MAX_TEXT_CHARS, DEFAULT_MAX_REQUEST_TEXT_CHARS):
            data = json.dumps(body).encode()
            runs = []
            for _ in range(repeats):
                peak, stop, behind = [rss()], threading.Event(), []

                def sample():
                    while not stop.is_set():
                        peak.append(rss())
                        time.sleep(0.2)

                def small():
                    time.sleep(1.0)
                    t = time.perf_counter()
                    httpx.post(srv.url + "/v1/rerank", json={"query": "hi", "documents": ["there"]}, timeout=1800)
                    behind.append(time.perf_counter() - t)

                threads = [threading.Thread(target=sample), threading.Thread(target=small)]
                for t in threads:
                    t.start()
                t0 = time.perf_counter()
                r = httpx.post(srv.url + path, content=data, timeout=1800,
                               headers={"content-type": "application/json"})
                seconds = time.perf_counter() - t0
                threads[1].join()
                stop.set()
                threads[0].join()
                runs.append({"status": r.status_code, "seconds": seconds, "rss_before_mb": peak[0],
                             "rss_peak_mb": max(peak), "small_request_waited_s": behind[0],
                             "message": r.json()["error"]["message"][:200] if r.status_code != 200 else None})
            secs = [x["seconds"] for x in runs]
            row = {"case": what, "path": path, "body_bytes": len(data), "status": runs[0]["status"],
                   "seconds_median": statistics.median(secs), "seconds_range": [min(secs), max(secs)],
                   "rss_growth_peak_mb": round(max(x["rss_peak_mb"] - x["rss_before_mb"] for x in runs)),
                   "small_request_waited_s_median": statistics.median(x["small_request_waited_s"] for x in runs),
                   "message": runs[0]["message"], "runs": runs}
            print(json.dumps({k: row[k] for k in ("case", "status", "seconds_median", "rss_growth_peak_mb",
                                                  "small_request_waited_s_median")}), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "text-limits.json")
    ap.add_argument("--repeats", type=int, default=1, help="requests per case and side")
    ap.add_argument("--sides", nargs="+", default=["on", "off"], choices=["on", "off"])
    args = ap.parse_args(argv)

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind="reranker", size="tiny")
    sides = {"on": {}, "off": {"QWEN3VL_MAX_TEXT_CHARS": "0", "QWEN3VL_MAX_REQUEST_TEXT_CHARS": "0"}}
    out = {"benchmark": "text_limits", "model": "tiny reranker (random weights, its own tokenizer)",
           "repeats": args.repeats, "sides": {}}
    for side in args.sides:
        print(f"-- limits {side}", flush=True)
        out["sides"][side] = run_side(ckpt, sides[side], args.repeats,
                                      HERE.parent / ".cache" / "logs" / f"text-limits-{side}.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
