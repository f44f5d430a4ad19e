"""Offline engines on long videos, in a separate process; writes a JSON report.

Usage: python long_video_worker.py EMBEDDING_CKPT RERANKER_CKPT OUT.json VIDEO_1MIN VIDEO_10MIN
Exits 0 once the report is written, even if vLLM aborts at teardown (the exit guard, SPEC §4).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENGINE = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.25, max_num_seqs=16)


def _run(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        result, meta = call()
        seconds = time.monotonic() - t0
    fit = [str(w.message) for w in caught if w.category.__name__ == "VideoFitWarning"]
    return result, meta, fit, round(seconds, 1)


def _refused(call) -> str:
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is part of the report
        return f"{type(e).__name__}: {e}"
    return "no error raised"


def main() -> int:
    from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder, Qwen3VLReranker

    emb_ckpt, rr_ckpt, out, v1, v10 = sys.argv[1:6]
    report: dict = {}
    items = [{"video": v1}, {"text": "a red square"}, {"video": v10}, {"video": v1, "max_frames": 8}]
    with Qwen3VLEmbedder(emb_ckpt, **ENGINE) as model:
        vectors, meta, fit, seconds = _run(lambda: model.process(items, return_metadata=True))
        report["embed"] = {"vectors": vectors.tolist(), "meta": meta, "warnings": fit, "seconds": seconds}
        model.video_fit = "refuse"
        report["embed_refused"] = _refused(lambda: model.process([{"text": "ok"}, {"video": v1}]))
    query = {"video": v1}
    docs = [{"video": v10}, {"text": "a red square moving"}]
    with Qwen3VLReranker(rr_ckpt, **ENGINE) as model:
        scores, meta, fit, seconds = _run(lambda: model.process({"query": query, "documents": docs},
                                                                 return_metadata=True))
        report["rerank"] = {"scores": scores, "meta": meta, "warnings": fit, "seconds": seconds}
        model.video_fit = "refuse"
        report["rerank_refused"] = _refused(lambda: model.process({"query": query, "documents": docs}))
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
