"""The demo: tiny checkpoints -> embedding and reranker servers on 127.0.0.1 -> clients.

Everything is generated locally (checkpoint, image, video frames). The server is always stopped
and the demo's exit code never depends on the server's own exit (SPEC §4 abort).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def demo_media():
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

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from qwen3vl_vllm.clients.embedding import EmbeddingClient
    from qwen3vl_vllm.ops.launcher import ServerProcess, vllm_env
    from qwen3vl_vllm.clients.rerank import RerankClient

    root = Path(root).resolve()
    t0 = time.monotonic()
    print("[demo] building the tiny Qwen3-VL-Embedding and -Reranker checkpoints ...", flush=True)
    emb_ckpt = ensure_checkpoint(root / "checkpoints", kind="embedding", size="tiny")
    rr_ckpt = ensure_checkpoint(root / "checkpoints", kind="reranker", size="tiny")
    args = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.25",
            "--max-num-seqs", "8"]
    env = vllm_env(root / "vllm")
    print("[demo] starting two `vllm serve` processes on 127.0.0.1 (no model flags: the plugin "
          "configures both) ...", flush=True)
    emb = ServerProcess(emb_ckpt, port=port, extra_args=args, env=env,
                        log_path=root / "logs" / "demo-embedding-server.log")
    rr = ServerProcess(rr_ckpt, extra_args=args, env=env,
                       log_path=root / "logs" / "demo-reranker-server.log")
    image, frames = demo_media()
    try:
        emb.start()
        rr.start()
        emb.wait_healthy()
        rr.wait_healthy()
        print(f"[demo] servers healthy after {time.monotonic() - t0:.0f}s: embedding "
              f"{emb.base_url}, reranker {rr.base_url}", flush=True)
        items = [
            {"text": "A yellow sun over a green field."},
            {"image": image},
            {"text": "A yellow sun over a green field.", "image": image},
            {"video": frames},
        ]
        labels = ["text", "image", "text+image", "video"]
        with EmbeddingClient(base_url=emb.base_url) as client:
            vectors = client.embed(items)
            small = client.embed(items, dimensions=32)
        query = {"text": "A sunny day in the countryside"}
        docs = [{"text": "A yellow sun over a green field."}, {"image": image},
                {"text": "A yellow sun over a green field.", "image": image}]
        with RerankClient(base_url=rr.base_url) as rclient:
            hits = rclient.rerank(query, docs)
    finally:
        emb.stop()
        rr.stop()
    print(f"[demo] embeddings: {vectors.shape[0]} x {vectors.shape[1]} (L2 norms "
          f"{', '.join(f'{n:.4f}' for n in np.linalg.norm(vectors, axis=1))})")
    print("[demo] cosine similarity matrix:")
    print(" " * 12 + "".join(f"{label:>12}" for label in labels))
    for label, row in zip(labels, vectors @ vectors.T):
        print(f"{label:>12}" + "".join(f"{v:12.4f}" for v in row))
    print(f"[demo] Matryoshka dimensions=32: shape {small.shape}")
    print(f"[demo] rerank, query {query['text']!r}:")
    doc_labels = ["text", "image", "text+image"]
    for hit in hits:
        print(f"[demo]   documents[{hit.index}] ({doc_labels[hit.index]:>10}): {hit.relevance_score:.4f}")
    print(f"[demo] servers stopped; total {time.monotonic() - t0:.0f}s")
    return 0
