"""The demo: tiny checkpoint -> embedding server on 127.0.0.1 -> client -> similarity matrix.

Everything is generated locally (checkpoint, image, video frames). The server is always stopped
and the demo's exit code never depends on the server's own exit (SPEC §4 abort).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def demo_media():
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 240), (30, 120, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 60, 220, 180), fill=(250, 200, 40))
    draw.rectangle((0, 200, 320, 240), fill=(40, 160, 60))
    frames = []
    for t in range(6):
        f = Image.new("RGB", (160, 120), (20, 20, 40))
        ImageDraw.Draw(f).ellipse((10 + 20 * t, 40, 50 + 20 * t, 80), fill=(240, 80, 60))
        frames.append(f)
    return image, frames


def run(root: str | os.PathLike = ".cache", port: int | None = None) -> int:
    import numpy as np

    from .checkpoint import ensure_checkpoint
    from .client import EmbeddingClient
    from .launcher import ServerProcess, vllm_env

    root = Path(root).resolve()
    t0 = time.monotonic()
    print("[demo] building the tiny Qwen3-VL-Embedding checkpoint ...", flush=True)
    ckpt = ensure_checkpoint(root / "checkpoints", kind="embedding", size="tiny")
    print(f"[demo] checkpoint: {ckpt}", flush=True)
    args = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.3",
            "--max-num-seqs", "8"]
    log = root / "logs" / "demo-embedding-server.log"
    print("[demo] starting `vllm serve` on 127.0.0.1 (plugin flags only: none) ...", flush=True)
    server = ServerProcess(ckpt, port=port, extra_args=args, log_path=log,
                           env=vllm_env(root / "vllm"))
    with server:
        print(f"[demo] server healthy at {server.base_url} after {time.monotonic() - t0:.0f}s", flush=True)
        image, frames = demo_media()
        items = [
            {"text": "A yellow sun over a green field."},
            {"image": image},
            {"text": "A yellow sun over a green field.", "image": image},
            {"video": frames},
        ]
        labels = ["text", "image", "text+image", "video"]
        with EmbeddingClient(base_url=server.base_url) as client:
            vectors = client.embed(items)
            small = client.embed(items, dimensions=32)
    print(f"[demo] embeddings: {vectors.shape[0]} x {vectors.shape[1]} (L2 norms "
          f"{', '.join(f'{n:.4f}' for n in np.linalg.norm(vectors, axis=1))})")
    print("[demo] cosine similarity matrix:")
    print(" " * 12 + "".join(f"{label:>12}" for label in labels))
    for label, row in zip(labels, vectors @ vectors.T):
        print(f"{label:>12}" + "".join(f"{v:12.4f}" for v in row))
    print(f"[demo] Matryoshka dimensions=32: shape {small.shape}")
    print(f"[demo] server stopped; total {time.monotonic() - t0:.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run()
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - report, exit non-zero with a reason
        print(f"[demo] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
