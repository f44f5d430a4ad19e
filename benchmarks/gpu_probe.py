"""Check "The GPU, on paper" on your own GPU box, in one command.

    python benchmarks/gpu_probe.py --model Qwen/Qwen3-VL-Embedding-2B          # ~5 min on one GPU
    python benchmarks/gpu_probe.py --model Qwen/Qwen3-VL-Embedding-8B --api-server-counts 1 2 4 8

For each ``--api-server-count`` (default: 1 and the plugin's own choice for this box), it starts
``vllm serve MODEL`` with the plugin (nothing else), sends each input kind of
``benchmarks/frontend.py`` at high concurrency (new items only: no cache answers), and prints per
kind: items/s, the CPU ms per item of the API server processes and of the engine core, and the
items/s the README's table predicts from FLOPs at 40 % MFU (``gpu_paper``), with the MFU this box
reached. Where the API servers' CPU per item times the items/s approaches their count, the front
end is the bound: try a larger count. Results go to ``--out`` as JSON. Nothing is asserted.

It needs the model's weights where vLLM can load them (a hub cache or a local path) and a GPU;
it also runs on CPU against the tiny checkpoints, which is how the test suite checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def probe(model: str, *, kinds: list[str], counts: list[int | None], concurrency: int, requests: int,
          size: str, out: Path, extra_args: list[str]) -> dict:
    import frontend
    import gpu_paper
    import serving
    from qwen3vl_vllm.ops.launcher import ServerProcess
    from qwen3vl_vllm.serving.settings import gpu_api_server_count
    from run import served_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {"model": model, "size": size, "cores": cores, "plugin_default_api_servers": gpu_api_server_count(cores),
           "concurrency": concurrency, "requests": requests, "runs": []}
    tmp = out / "media"
    for count in counts:
        args = list(extra_args) + ([f"--api-server-count={count}"] if count else [])
        label = f"api-server-count={count or 'plugin default'}"
        with ServerProcess(model, extra_args=args, log_path=out / "logs" / f"probe-{count or 'default'}.log") as srv:
            name = served_model(srv.base_url)
            run = {"api_server_count": count, "kinds": {}}
            for i, kind in enumerate(kinds):
                spec = frontend.KINDS[kind]
                path = "/v1/rerank" if kind == "rerank-1x20" else "/embeddings"
                base = srv.base_url if path == "/embeddings" else srv.url
                n = max(1, requests // spec["per_request"]) if spec["per_request"] > 1 else requests
                warm = frontend.bodies(kind, "plugin", frontend.make_items(kind, 4, 500 + i, tmp), name, srv.base_url)
                serving.level(serving.http_sender(base, path, warm, spec["per_request"]),
                              n_requests=len(warm), concurrency=4)
                reqs = frontend.bodies(kind, "plugin", frontend.make_items(kind, n, 600 + 10 * i + len(run["kinds"]),
                                                                           tmp), name, srv.base_url)
                got = frontend.measure_server(srv, path, reqs, spec["per_request"], concurrency)
                run["kinds"][kind] = got
                print(f"[probe] {label} {kind}: {got['items_per_s']:.1f} items/s, CPU ms/item "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(got["cpu_ms_per_item"].items())), flush=True)
            res["runs"].append(run)
    shape = gpu_paper.SHAPES[size]
    photo = next((r["kinds"]["photo-512"] for r in res["runs"] if "photo-512" in r["kinds"]), None)
    template = photo["prompt_tokens_per_item"] - gpu_paper.IMAGE_TOKENS["photo-512"] if photo else 30.0
    for run in res["runs"]:
        for kind, got in run["kinds"].items():
            flops = gpu_paper.item_flops(shape, kind, got["prompt_tokens_per_item"], template)
            got["tflop_per_item"] = flops / 1e12
            got["achieved_tflops"] = got["items_per_s"] * flops / 1e12
            got["predicted_items_per_s_at_40pct_mfu"] = gpu_paper.GPUS["H100"] * gpu_paper.MFU / flops
    return res


def markdown(res: dict) -> str:
    lines = [f"{res['model']} ({res['size']} shapes), {res['cores']} usable cores, c = {res['concurrency']}; "
             f"the plugin's API server default here: {res['plugin_default_api_servers']}", "",
             "| api servers | input | items/s | API server CPU ms/item | engine core CPU ms/item | "
             "achieved TFLOP/s | table's items/s (H100/H200 at 40 % MFU) |", "|---|---|---|---|---|---|---|"]
    for run in res["runs"]:
        for kind, g in run["kinds"].items():
            cpu = g["cpu_ms_per_item"]
            lines.append(f"| {run['api_server_count'] or 'default'} | {kind} | {g['items_per_s']:.1f} | "
                         f"{cpu.get('api_server', 0.0):.2f} | {cpu.get('engine_core', 0.0) + cpu.get('worker', 0.0):.2f} | "
                         f"{g['achieved_tflops']:.1f} | {g['predicted_items_per_s_at_40pct_mfu']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import frontend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a Qwen3-VL-Embedding / -Reranker name or local path")
    ap.add_argument("--size", choices=["2B", "8B"], help="its shapes for the FLOP count (default: from the name)")
    ap.add_argument("--kinds", nargs="+", help="input kinds (default: every embedding kind, or rerank-1x20 "
                                               "for a reranker)")
    ap.add_argument("--api-server-counts", nargs="+", type=int, help="default: 1 and the plugin's choice")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=512, help="items per kind and count")
    ap.add_argument("--server-arg", action="append", default=[], help="an extra vllm serve argument")
    ap.add_argument("--out", default=str(HERE / "results" / f"gpu-probe-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = ap.parse_args(argv)
    from qwen3vl_vllm.serving.detect import detect_kind

    kind = detect_kind(args.model)
    if kind is None:
        raise SystemExit(f"{args.model}: not a Qwen3-VL-Embedding or -Reranker checkpoint")
    kinds = args.kinds or [k for k, v in frontend.KINDS.items() if v["model"] == kind]
    size = args.size or ("8B" if "8b" in args.model.lower() else "2B")
    counts = args.api_server_counts or [1, None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = probe(args.model, kinds=kinds, counts=counts, concurrency=args.concurrency, requests=args.requests,
                size=size, out=out, extra_args=args.server_arg)
    (out / "gpu-probe.json").write_text(json.dumps(res, indent=1))
    print(markdown(res))
    print(f"[probe] wrote {out}/gpu-probe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
