"""Run Qwen3VLReranker offline on the reranker cases in its own process; write JSON results.

Usage: python offline_rerank_worker.py CHECKPOINT OUT.json TMPDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    from cases import noise_image, rerank_cases, twenty_documents
    from qwen3vl_vllm.errors import InputError, MediaError
    from qwen3vl_vllm.offline.engines import Qwen3VLReranker

    ckpt, out, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    results: dict = {"cases": {}, "errors": {}}
    with Qwen3VLReranker(ckpt, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.25,
                         max_num_seqs=16) as model:
        for name, inputs in rerank_cases(tmp).items():
            results["cases"][name] = model.process(inputs)
        from cases import rerank_matrix_cases

        results["matrix"] = {name: model.process(inputs)
                             for name, inputs in rerank_matrix_cases(tmp / "matrix").items()}
        results["twenty"] = model.process(twenty_documents())
        order_a = {"query": {"text": "q"}, "documents": [{"text": "t", "image": noise_image(64, 64, 5)}]}
        results["prompt_order"] = model.pair_prompts(order_a)[0]["prompt"]
        bad = {"query": {"text": "q"}, "documents": [{"text": "ok"}, {"image": b"broken"}, {"text": "ok"}]}
        bad_query = {"query": {"image": b"broken"}, "documents": [{"text": "a"}, {"text": "b"}]}
        for key, inputs in {"bad_doc": bad, "bad_query": bad_query,
                            "empty_docs": {"query": {"text": "q"}, "documents": []}}.items():
            try:
                model.process(inputs)
                results["errors"][key] = "no error raised"
            except (MediaError, InputError) as e:
                results["errors"][key] = f"{type(e).__name__}: {e}"
        from cases import exif_photo, real_world_rerank

        results["real"] = model.process(real_world_rerank(exif_photo(tmp / "real" / "phone.jpg")))
        from offline_worker import fuzz_cases

        results["fuzz"], results["fuzz_errors"] = {}, {}
        for case in fuzz_cases("rerank"):  # the differential fuzzer's inputs
            try:
                results["fuzz"][case.name] = model.process(case.item)
            except Exception as e:  # noqa: BLE001 - recorded: the test tells typed errors apart
                results["fuzz_errors"][case.name] = f"{type(e).__name__}: {e}"
    out.write_text(json.dumps(results))
    print("offline rerank worker: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
