"""Which image transport should the client use: pre-resized PNGs, or the original files?

Since the server prepares every image as the reference does (the plugin's media connector), both
give the same vector; this measures which is faster end to end. Each round embeds images the
server has never seen (fresh seeds: no multimodal cache hits), alternating the two transports:

- ``resized``: the client decodes, converts and resizes like qwen-vl-utils, sends a PNG
  (``EmbeddingClient``'s way);
- ``original``: the client sends the original file bytes as a data URL; the server decodes and
  resizes.

Reported per transport: requests/s (median and range over rounds), client CPU seconds per
request (building the body; sending is the same for both), bytes sent per request, and the
largest difference between the two transports' vectors. Written to JSON.

    .venv/bin/python benchmarks/image_transport.py --out benchmarks/results/image-transport
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photo(w: int, h: int, seed: int):
    """A photo-like image: smooth gradients, shapes and mild noise (compresses like a photo)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.1, 0.3) + y * rng.uniform(0.1, 0.3) + rng.uniform(0, 255)) % 255
                     for _ in range(3)], axis=-1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        draw.ellipse([x0, y0, x0 + rng.randint(20, w // 3), y0 + rng.randint(20, h // 3)],
                     fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
    return img.filter(ImageFilter.GaussianBlur(1.2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image-transport"))
    ap.add_argument("--images", type=int, default=32, help="images per round and transport")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1280x960")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import httpx

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from qwen3vl_vllm.clients.messages import embedding_body
    from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS
    from qwen3vl_vllm.ops.launcher import ServerProcess
    from qwen3vl_vllm.media.sources import DEFAULT_POLICY

    ckpt = ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind="embedding", size="tiny")
    files = out / "images"
    files.mkdir(exist_ok=True)

    def make(round_: int, transport: str) -> list[Path]:
        paths = []
        for i in range(args.images):
            p = files / f"r{round_}-{transport}-{i}.jpg"
            photo(w, h, seed=hash((round_, transport, i)) % 2**31).save(p, quality=90)
            paths.append(p)
        return paths

    def body(path: Path, transport: str, model: str) -> dict:
        if transport == "resized":
            return embedding_body({"image": str(path)}, index=0, model=model, instruction=None,
                                  dimensions=None, encoding_format="float",
                                  settings=DEFAULT_SETTINGS, policy=DEFAULT_POLICY)
        url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
        return {"model": model, "add_generation_prompt": True, "encoding_format": "float",
                "messages": [{"role": "system", "content": "Represent the user's input."},
                             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}

    results: dict = {"resized": [], "original": []}
    server = ServerProcess(ckpt, extra_args=["--dtype", "float32", "--enforce-eager",
                                             "--gpu-memory-utilization", "0.25", "--max-num-seqs", "16"],
                           log_path=out / "server.log")
    with server, httpx.Client(timeout=300) as http:
        model = server.model
        # parity between the transports on one image
        probe = make(99, "probe")[:1]
        vecs = {t: np.asarray(http.post(server.base_url + "/embeddings", json=body(probe[0], t, model))
                              .json()["data"][0]["embedding"]) for t in results}
        max_diff = float(np.abs(vecs["resized"] - vecs["original"]).max())
        for r in range(args.rounds):
            for transport in (("resized", "original") if r % 2 == 0 else ("original", "resized")):
                paths = make(r, transport)
                sizes, cpu = [], [0.0]

                def one(p, transport=transport, sizes=sizes, cpu=cpu):
                    t0 = time.thread_time()
                    b = body(p, transport, model)
                    cpu[0] += time.thread_time() - t0
                    raw = json.dumps(b).encode()
                    sizes.append(len(raw))
                    resp = http.post(server.base_url + "/embeddings", content=raw,
                                     headers={"content-type": "application/json"})
                    assert resp.status_code == 200, resp.text[:300]

                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(one, paths))
                wall = time.perf_counter() - t0
                results[transport].append({"requests_per_s": args.images / wall,
                                           "client_cpu_ms_per_request": 1000 * cpu[0] / args.images,
                                           "bytes_per_request": statistics.mean(sizes)})
    summary = {"image_size": args.size, "images_per_round": args.images, "rounds": args.rounds,
               "concurrency": args.concurrency, "max_abs_diff_between_transports": max_diff}
    for transport, rows in results.items():
        rps = [x["requests_per_s"] for x in rows]
        summary[transport] = {
            "requests_per_s_median": statistics.median(rps), "requests_per_s_range": [min(rps), max(rps)],
            "client_cpu_ms_per_request": statistics.median(x["client_cpu_ms_per_request"] for x in rows),
            "bytes_per_request": statistics.median(x["bytes_per_request"] for x in rows), "rounds": rows}
    summary["original_over_resized"] = (summary["original"]["requests_per_s_median"]
                                        / summary["resized"]["requests_per_s_median"])
    (out / "image-transport.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("resized", "original")}, indent=2))
    for t in ("resized", "original"):
        s = summary[t]
        print(f"{t}: {s['requests_per_s_median']:.2f} req/s ({s['requests_per_s_range'][0]:.2f}-"
              f"{s['requests_per_s_range'][1]:.2f}), client CPU {s['client_cpu_ms_per_request']:.1f} ms/request, "
              f"{s['bytes_per_request'] / 1024:.0f} KiB/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
