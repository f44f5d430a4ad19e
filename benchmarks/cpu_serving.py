"""Real-shape serving on CPU: a 2B-shaped server started with zero model flags.

For each configuration (``--reserved``: the cores vLLM keeps for the front end), it starts
``vllm serve CHECKPOINT`` with no flags but host/port (and without ``VLLM_CPU_KVCACHE_SPACE``:
the plugin sizes the KV cache), and reports time to ``/health``, first-request latency for one
short text and one 640x480 image, req/s at c=1 and c=4 on mixed requests (text and images, each
new to the server), the process tree's peak RSS, and prompt tokens/s on text against this
machine's bf16 matmul peak (MFU). The server is always stopped; counts and time are bounded.

    python benchmarks/cpu_serving.py --kind embedding --reserved 1 0 --out .cache/bench/cpu-serving.json

Nothing here asserts a time; ``--check`` fails the run only when a server does not start or a
request fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORDS = ("river stone light market window garden letter engine silver morning paper forest "
         "harbor cloud station violin ladder orange winter bridge").split()


def _text(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] + str((i + k) % 97) for k in range(n_words))


def _image_url(i: int, w: int = 640, h: int = 480) -> str:
    import numpy as np
    from PIL import Image

    arr = (np.random.RandomState(1000 + i).rand(h, w, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class PeakTreeRSS:
    """Peak summed RSS of a process and its descendants (API server, engine core, worker)."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _body(kind: str, model: str, i: int, image: bool, words: int) -> tuple[str, dict]:
    content = [{"type": "text", "text": _text(i, words)}]
    if image:
        content.insert(0, {"type": "image_url", "image_url": {"url": _image_url(i)}})
    if kind == "embedding":
        return "/v1/embeddings", {"model": model, "add_generation_prompt": True, "encoding_format": "float",
                                  "messages": [{"role": "user", "content": content}]}
    return "/v1/rerank", {"model": model, "query": _text(i + 500, 8),
                          "documents": [{"content": content}, _text(i + 900, words)]}


def run_config(kind: str, ckpt: str, reserved: int | None, log_dir: Path, n_c1: int, n_c4: int,
               n_text: int) -> dict:
    import httpx

    from qwen3vl_vllm.ops.launcher import ServerProcess, vllm_env

    env = vllm_env()
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # zero flags: the plugin sizes it
    if reserved is None:
        env.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)
    else:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
    log = log_dir / f"cpu-serving-{kind}-reserved{reserved}.log"
    server = ServerProcess(ckpt, env=env, log_path=log, startup_timeout=900)
    out: dict = {"kind": kind, "reserved_cores": reserved, "log": str(log)}
    t0 = time.monotonic()
    server.start()
    rss = PeakTreeRSS(server.proc.pid)
    try:
        state = server.poll_healthy(900)
        out["health_s"] = round(time.monotonic() - t0, 1)
        out["started"] = state == "healthy"
        if state != "healthy":
            out["error"] = f"server {state}"
            return out
        model = httpx.get(server.base_url + "/models", timeout=30).json()["data"][0]["id"]
        failures: list[str] = []
        tokens = [0]

        def one(i: int, image: bool, words: int) -> float:
            path, body = _body(kind, model, i, image, words)
            t = time.monotonic()
            r = httpx.post(server.url + path, json=body, timeout=1800)
            if r.status_code != 200:
                failures.append(f"{path} {r.status_code} {r.text[:200]}")
            else:
                tokens[0] += int(r.json().get("usage", {}).get("prompt_tokens", 0))
            return time.monotonic() - t

        out["first_text_s"] = round(one(0, False, 12), 2)
        out["first_image_s"] = round(one(1, True, 12), 2)
        for c, n, base in ((1, n_c1, 100), (4, n_c4, 200)):
            t = time.monotonic()
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(lambda i: one(base + i, i % 2 == 1, 12), range(n)))
            out[f"mixed_c{c}_req_s"] = round(n / (time.monotonic() - t), 3)
        tokens[0] = 0
        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: one(300 + i, False, 60), range(n_text)))
        out["text_prompt_tokens_per_s"] = round(tokens[0] / (time.monotonic() - t), 1)
        out["failures"] = failures
    finally:
        server.stop()
        out["peak_rss_gib"] = round(rss.stop() / 2**30, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["embedding", "reranker"], nargs="+", default=["embedding"])
    ap.add_argument("--reserved", nargs="+", default=["default"],
                    help="VLLM_CPU_NUM_OF_RESERVED_CPU values to compare ('default': vLLM's)")
    ap.add_argument("--n-c1", type=int, default=4)
    ap.add_argument("--n-c4", type=int, default=8)
    ap.add_argument("--n-text", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "cpu-serving.json"))
    ap.add_argument("--check", action="store_true", help="exit 1 if a server fails to start or a request fails")
    args = ap.parse_args(argv)

    from offline import matmul_peak, text_flops_per_token
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak("bfloat16")
    results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "bf16_matmul_peak_gflops": round(peak, 1),
               "runs": []}
    for kind in args.kind:
        ckpt = str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind=kind, size="2b"))
        gflop = text_flops_per_token(ckpt) / 1e9
        for value in args.reserved:
            reserved = None if value == "default" else int(value)
            r = run_config(kind, ckpt, reserved, out_path.parent, args.n_c1, args.n_c4, args.n_text)
            if r.get("text_prompt_tokens_per_s"):
                r["served_text_mfu"] = round(r["text_prompt_tokens_per_s"] * gflop / peak, 4)
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
            out_path.write_text(json.dumps(results, indent=2))
    bad = [r for r in results["runs"] if not r.get("started") or r.get("failures")]
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
