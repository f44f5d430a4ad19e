"""How far bfloat16 moves reranker scores on each side: the yardstick for bf16 parity bounds.

    python benchmarks/bf16_noise.py [--workload rerank-1x20-images] [--variant 202] [--out DIR]

Scores one rerank set (2B-shaped reranker, real shapes, random weights) three ways: the offline
API on vLLM in bfloat16, the transformers reference in bfloat16, and the reference in float32
(the closest thing to exact). Two bf16 implementations may each be as far from float32 as the
other, so their difference can reach the sum of their errors: ``offline.PARITY["bfloat16"]`` is
set from the reference's own bf16 error printed here. One engine or model is loaded at a time
(the float32 2B model alone is 8.8 GB). ~7 min on 2 cores. Writes ``bf16-noise.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import offline  # noqa: E402
import workloads  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="rerank-1x20-images")
    parser.add_argument("--variant", type=int, default=202, help="the full bench's first timed set")
    parser.add_argument("--out", default=str(HERE / "results" / "bf16-noise"))
    args = parser.parse_args(argv)

    import numpy as np

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from qwen3vl_vllm.offline.engines import Qwen3VLReranker
    from qwen3vl_vllm.testing.reference import ReferenceReranker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind="reranker", size="2b"))
    inputs = workloads.build(args.workload, out / "media", variant=args.variant)[1]
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # vLLM would let it override REAL_SHAPE_ENGINE's
    scores = {}
    with Qwen3VLReranker(ckpt, dtype="bfloat16", **offline.REAL_SHAPE_ENGINE) as model:
        scores["vllm_bfloat16"] = [float(s) for s in model.process(inputs)]
    gc.collect()
    for dtype in ("bfloat16", "float32"):
        ref = ReferenceReranker(ckpt, dtype=dtype)
        scores[f"reference_{dtype}"] = [float(s) for s in ref.process(inputs)]
        del ref
        gc.collect()
    v, r, exact = (np.array(scores[k]) for k in ("vllm_bfloat16", "reference_bfloat16", "reference_float32"))
    result = {"workload": args.workload, "variant": args.variant, "pairs": len(exact), "scores": scores,
              "max_abs": {"vllm_bf16_vs_reference_bf16": float(np.abs(v - r).max()),
                          "vllm_bf16_vs_float32": float(np.abs(v - exact).max()),
                          "reference_bf16_vs_float32": float(np.abs(r - exact).max())},
              "mean_abs": {"vllm_bf16_vs_reference_bf16": float(np.abs(v - r).mean()),
                           "vllm_bf16_vs_float32": float(np.abs(v - exact).mean()),
                           "reference_bf16_vs_float32": float(np.abs(r - exact).mean())}}
    (out / "bf16-noise.json").write_text(json.dumps(result, indent=2))
    for k in result["max_abs"]:
        print(f"{k}: max |diff| {result['max_abs'][k]:.4f}, mean {result['mean_abs'][k]:.4f}")
    print(f"float32 scores range {exact.min():.3f}-{exact.max():.3f}; wrote {out / 'bf16-noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
