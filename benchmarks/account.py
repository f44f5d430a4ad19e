"""Where every millisecond of the serving path goes, per process, for one input kind.

    .venv/bin/python benchmarks/account.py --kinds text photo-512 --out benchmarks/results/account

Starts the plugin server with ``sampler/sitecustomize.py`` on its ``PYTHONPATH``: each of its
processes (API server, engine core, worker) charges the CPU time the kernel gave each thread to
that thread's Python stack at that moment (native code to the Python call that entered it). The
stacks are sorted into the serving path's steps by ``STEPS`` (first match wins, searched from
the innermost frame outwards). The parts are checked against ``psutil``'s CPU time of each
process over the same window: the table prints both, and the difference.

Also run as part of ``./launch.sh bench frontend``. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# (step, substrings of "file:function"; a frame matches if it contains any). The innermost
# frame that matches any step decides, so specific steps (hashing inside the processor) win.
STEPS = [
    ("sampler itself", ("<sampler>",)),
    ("idle wait (selector, queue, sleep)", ("selectors.py:select", "threading.py:wait", "queue.py:get",
                                            "asyncio/base_events.py:_run_once:select", ":sleep")),
    ("spin-wait for the next step (vLLM's shm queue busy-loop)", ("sched_yield", "shm_broadcast.py:wait",
                                                                  "shm_broadcast.py:acquire_read")),
    ("hashing (multimodal cache keys)", ("multimodal/hasher.py", "blake3", "hashlib")),
    ("base64 decode", ("b64decode", "pybase64")),
    ("decode, RGB, resize (media connector)", ("qwen3vl_vllm/serving/media_connector.py", "qwen3vl_vllm/media/",
                                               "vllm/multimodal/media/", "vllm/multimodal/image.py", "PIL/")),
    ("HF processor (pixels to patches)", ("image_processing", "video_processing", "processing_qwen3_vl",
                                          "transformers/processing_utils", "image_transforms", "torchvision")),
    ("multimodal processing (vLLM: prompt updates, fields)", ("vllm/multimodal/processing", "vllm/multimodal/",
                                                              "vllm/model_executor/models/qwen3_vl.py:_get",
                                                              "qwen2_vl.py")),
    ("chat template: render and tokenise", ("chat_utils", "jinja2", "tokenizers", "tokenization_utils",
                                            "vllm/tokenizers", "vllm/transformers_utils/tokenizer",
                                            "apply_chat_template", "renderer", "qwen3vl_vllm/serving/embed_inputs",
                                            "qwen3vl_vllm/prompts/")),
    ("serialise and transport (msgpack, zmq, shm)", ("serial_utils", "msgspec", "zmq", "shm_broadcast",
                                                     "pickle", "core_client.py", "multiproc_executor.py")),
    ("forward (model, torch)", ("model_executor/models", "torch/nn", "torch/_ops", "attention", "cpu_model_runner",
                                "gpu_model_runner", "_model_forward", "execute_model")),
    ("engine core: scheduling, batching, outputs", ("v1/core/sched", "v1/engine/core.py", "v1/core/", "v1/worker/",
                                                    "v1/outputs", "v1/request")),
    ("output processing and response (vectors to JSON)", ("output_processor", "serving_embedding", "serving_score",
                                                          "pooling", "base64.py:b64encode", "_base64_encode",
                                                          "serving_engine.py:_build", "protocol", "pydantic")),
    ("HTTP, JSON, ASGI middlewares", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "json/",
                                      "qwen3vl_vllm/serving/auth", "qwen3vl_vllm/serving/error_naming")),
    ("event loop: sockets, HTTP parsing, request plumbing (uvloop, vLLM API server)",
     ("asyncio/", "uvloop", "vllm/entrypoints", "vllm/v1/engine/async_llm", "vllm/v1/engine/output")),
    ("thread pool running native calls (vLLM's executor)", ("concurrent/futures/thread.py:_worker",)),
    ("native threads (torch intra-op, tokenizers, zmq I/O)", ("<native thread",)),
]


def classify(stack: list[str], table, default: str) -> str:
    """The name of the first ``(name, substrings)`` of ``table`` that the innermost matching
    frame of ``stack`` (root first) contains; ``default`` when none does. Shared with
    ``profile_offline.py``."""
    for frame in reversed(stack):
        for name, keys in table:
            if any(k in frame for k in keys):
                return name
    return default


def step_of(stack: list[str]) -> str:
    return classify(stack, STEPS, "other Python")


def process_roles(files: list[dict]) -> dict[int, str]:
    """pid -> role for the sampler's files of one server tree, by ``frontend.role_of``: the
    depth of each process is counted up its parents among the sampled processes (the API
    server's parent, the benchmark, is not sampled)."""
    import frontend

    by_pid = {d["pid"]: d for d in files}

    def depth(d: dict) -> int:
        n = 0
        while d.get("ppid") in by_pid and n < 16:
            d, n = by_pid[d["ppid"]], n + 1
        return n

    return {pid: frontend.role_of(d["comm"] + " " + d["cmdline"], depth(d)) for pid, d in by_pid.items()}


def collect(folder: Path) -> dict:
    """{role: {step: ns}} and the top stacks per step, from every process's file."""
    out: dict[str, dict[str, int]] = {}
    top: dict[str, dict[str, int]] = {}
    files = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    roles = process_roles(files)
    for data in files:
        r = roles[data["pid"]]
        for stack, ns in data["stacks"]:
            step = step_of(stack)
            out.setdefault(r, {})[step] = out.setdefault(r, {}).get(step, 0) + ns
            leaf = " < ".join(_short(s) for s in reversed(stack[-3:]))
            key = f"{r} | {step} | {leaf}"
            top.setdefault(r, {})[key] = top.setdefault(r, {}).get(key, 0) + ns
    return {"steps": out, "top": {r: sorted(v.items(), key=lambda kv: -kv[1])[:25] for r, v in top.items()}}


def _short(frame: str) -> str:
    path, _, fn = frame.rpartition(":")
    parts = path.split("/")
    return "/".join(parts[-2:]) + ":" + fn


def account_kind(srv, kind: str, model: str, sample_dir: Path, tmp: Path, *, requests: int, concurrency: int,
                 seed: int) -> dict:
    import frontend
    import serving

    path = "/v1/rerank" if kind == "rerank-1x20" else "/embeddings"
    base = srv.base_url if path == "/embeddings" else srv.url
    per = frontend.KINDS[kind]["per_request"]
    items = frontend.make_items(kind, requests, seed, tmp)
    reqs = frontend.bodies(kind, "plugin", items, model, srv.base_url)
    warm = frontend.bodies(kind, "plugin", frontend.make_items(kind, 4, seed + 1, tmp), model, srv.base_url)
    serving.level(serving.http_sender(base, path, warm, per), n_requests=len(warm), concurrency=concurrency)
    label = f"{kind}-c{concurrency}"
    before = frontend.tree_cpu([srv.proc.pid])
    (sample_dir / "label").write_text(label)
    time.sleep(0.15)  # every sampler has seen the label (they look every 50 ms)
    lv = serving.level(serving.http_sender(base, path, reqs, per), n_requests=len(reqs), concurrency=concurrency)
    time.sleep(0.15)
    (sample_dir / "label").write_text("")
    cpu = frontend.delta(frontend.tree_cpu([srv.proc.pid]), before)
    time.sleep(0.5)  # each process writes its file when it sees the label change
    if lv["failed"]:
        raise RuntimeError(f"account {kind}: {lv['failures'][:2]}")
    got = collect(sample_dir / label)
    n = len(reqs) * per
    steps = {r: {s: ns / 1e6 / n for s, ns in v.items()} for r, v in got["steps"].items()}
    return {"kind": kind, "concurrency": concurrency, "items": n, "items_per_s": n / lv["seconds"],
            "psutil_ms_per_item": {r: v * 1000 / n for r, v in cpu.items()},
            "sampled_ms_per_item": steps,
            "top_stacks_ms_per_item": {r: [(k, ns / 1e6 / n) for k, ns in v] for r, v in got["top"].items()}}


def offline_child(kind: str, n: int, sample_dir: Path, tmp: Path) -> None:
    """In a process started with the sampler: the offline API on ``n`` items of ``kind``."""
    import frontend
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    model = frontend.KINDS[kind]["model"]
    engine = frontend._offline_engine(model, str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind=model,
                                                                   size="tiny")))
    items = frontend.make_items(kind, n, 95000, tmp)
    frontend._offline_answers(engine, kind, frontend.make_items(kind, 4, 95001, tmp))
    before = frontend.tree_cpu([os.getpid()], root_role="offline")
    (sample_dir / "label").write_text(f"offline-{kind}")
    time.sleep(0.15)
    t0 = time.perf_counter()
    frontend._offline_answers(engine, kind, items)
    seconds = time.perf_counter() - t0
    time.sleep(0.15)
    (sample_dir / "label").write_text("")
    cpu = frontend.delta(frontend.tree_cpu([os.getpid()], root_role="offline"), before)
    time.sleep(0.5)
    per = frontend.KINDS[kind]["per_request"] if kind == "rerank-1x20" else 1
    (sample_dir / f"offline-{kind}.psutil.json").write_text(json.dumps(
        {"items": n * per, "seconds": seconds, "cpu": cpu}))
    frontend._close(engine)


def account_offline(kind: str, n: int, out: Path) -> dict:
    """The offline API's account: ``offline_child`` in a process of its own, with the sampler."""
    import subprocess

    sample_dir = out / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    (sample_dir / "label").write_text("")
    env = dict(os.environ, QWEN3VL_SAMPLE_DIR=str(sample_dir),
               PYTHONPATH=os.pathsep.join([str(HERE / "sampler"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    subprocess.run([sys.executable, __file__, "--offline-child", kind, str(n), "--out", str(out)], env=env,
                   check=True, timeout=900)
    ps = json.loads((sample_dir / f"offline-{kind}.psutil.json").read_text())
    got = collect(sample_dir / f"offline-{kind}")
    items = ps["items"]
    return {"kind": kind, "concurrency": "offline", "items": items, "items_per_s": items / ps["seconds"],
            # one process: the offline API's (its files are read as an API server's)
            "psutil_ms_per_item": {"offline": sum(ps["cpu"].values()) * 1000 / items},
            "sampled_ms_per_item": {"offline": {s: ns / 1e6 / items for v in got["steps"].values()
                                                for s, ns in v.items()}},
            "top_stacks_ms_per_item": {"offline": [(k, ns / 1e6 / items) for v in got["top"].values() for k, ns in v]}}


def markdown(rows: list[dict]) -> str:
    out = []
    for row in rows:
        out.append(f"\n**{row['kind']}, c = {row['concurrency']}** ({row['items']} items, "
                   f"{row['items_per_s']:.1f} items/s under the sampler)\n")
        out.append("| process | step | ms per item |")
        out.append("|---|---|---|")
        for r in ("api_server", "engine_core", "worker", "other", "offline"):
            steps = row["sampled_ms_per_item"].get(r)
            if not steps:
                continue
            for s, ms in sorted(steps.items(), key=lambda kv: -kv[1]):
                if ms >= 0.005:
                    out.append(f"| {r} | {s} | {ms:.3f} |")
            total = sum(steps.values())
            ps = row["psutil_ms_per_item"].get(r, 0.0)
            out.append(f"| {r} | **sum of the parts / psutil** | **{total:.3f} / {ps:.3f}** |")
        all_s = sum(sum(v.values()) for v in row["sampled_ms_per_item"].values())
        all_p = sum(row["psutil_ms_per_item"].values())
        out.append(f"| all | **sum of the parts / psutil (whole tree)** | **{all_s:.3f} / {all_p:.3f}** |")
    return "\n".join(out)


def run(out: Path, kinds: list[str], *, concurrency: tuple[int, ...] = (1, 8), requests: dict | None = None,
        server_args: tuple[str, ...] = ()) -> list:
    from qwen3vl_vllm.ops.launcher import ServerProcess
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from run import SIZING, served_model, server_env

    import frontend

    requests = requests or {"text": 200, "photo-512": 48}
    sample_dir = out / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    (sample_dir / "label").write_text("")
    env = dict(server_env(), QWEN3VL_SAMPLE_DIR=str(sample_dir),
               PYTHONPATH=os.pathsep.join([str(HERE / "sampler"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    rows = []
    by_model: dict[str, list[str]] = {}
    for k in kinds:
        by_model.setdefault(frontend.KINDS[k]["model"], []).append(k)
    for model_kind, group in by_model.items():
        ckpt = str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind=model_kind, size="tiny"))
        with ServerProcess(ckpt, extra_args=[*SIZING, *server_args], env=env, log_path=out / "logs" / f"account-{model_kind}.log") as srv:
            model = served_model(srv.base_url)
            for i, kind in enumerate(group):
                for c in concurrency:
                    n = requests.get(kind, 16 * frontend.KINDS[kind]["requests"][0])
                    row = account_kind(srv, kind, model, sample_dir, out / "media", requests=n,
                                       concurrency=c, seed=90000 + 100 * i + c)
                    rows.append(row)
                    print(markdown([row]), flush=True)
    return rows


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=["text", "photo-512"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--server-arg", action="append", default=[],
                    help="an extra vllm serve argument (a lever to measure), e.g. --server-arg=--api-server-count=2")
    ap.add_argument("--offline", action="store_true", help="also account the offline API on the same kinds")
    ap.add_argument("--offline-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "account"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.offline_child:
        offline_child(args.offline_child[0], int(args.offline_child[1]), out / "samples", out / "media")
        return 0
    rows = [] if args.concurrency == [0] else run(out, args.kinds, concurrency=tuple(args.concurrency),
                                                  server_args=tuple(args.server_arg))
    if args.offline:
        for kind in args.kinds:
            rows.append(account_offline(kind, {"text": 400, "photo-512": 48}.get(kind, 16), out))
            print(markdown([rows[-1]]), flush=True)
    (out / "account.json").write_text(json.dumps(rows, indent=1))
    (out / "account.md").write_text(markdown(rows) + "\n")
    print(f"[account] wrote {out}/account.json, account.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
