"""The index job's throughput on each backend against ``process()`` on the same items, and what
a resume costs after a SIGKILL at half way (``./launch.sh bench index``).

    python benchmarks/run.py index [--n 1000] [--rounds 2] [--out DIR]

Each round draws a new set of ``n`` mixed items (texts, photos, screenshots: the benchmark's
``mixed`` workload), written as files with a JSONL table, so no engine or server cache has seen
them. On that set it runs, in an order that alternates between rounds: ``process()`` in one
call (its own process, engine started before the clock), the job on the ``local`` backend, on
``servers`` (one plugin server, started once, warm), and on ``ray`` (two actors). Each job is
a fresh CLI process; its items/s count from the first chunk handed to the engine (``local``,
``servers``) or from the job's start of work (``ray``: the actors start inside it), and the
wall time includes everything. The resume row kills a ``local`` job's process group when half
its chunks are done, reruns it, and reports the rerun's time, the chunks it computed and the
overhead against an uninterrupted run of the same set. Medians and ranges over rounds;
results.json and results.md in the output folder. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = [sys.executable, "-m", "qwen3vl_vllm.ops.cli"]
ENGINE = ["--dtype", "float32", "--engine-arg", "enforce_eager=true", "--engine-arg", "max_num_seqs=64",
          "--engine-arg", "gpu_memory_utilization=0.25"]
CHUNK = 64

PROCESS_SCRIPT = r"""
import json, sys, time
from qwen3vl_vllm import Qwen3VLEmbedder
items = [json.loads(l) for l in open(sys.argv[2])]
for it in items:
    it.pop("id")
with Qwen3VLEmbedder(sys.argv[1], dtype="float32", enforce_eager=True, max_num_seqs=64,
                     gpu_memory_utilization=0.25) as m:
    m.process(items[:2])  # the first call's one-time costs, as the job's first chunk pays
    t0 = time.perf_counter()
    v = m.process(items[2:])
    s = time.perf_counter() - t0
print(json.dumps({"items": len(items) - 2, "seconds": s}))
"""


def write_set(tmp: Path, k: int, n: int) -> Path:
    """``n`` mixed items of round ``k`` as files and a JSONL table."""
    import workloads

    media = tmp / f"set{k}"
    media.mkdir(parents=True, exist_ok=True)
    rows, variant = [], 5000 + 100 * k
    while len(rows) < n:
        _, items = workloads.build("mixed", media, variant=variant)
        for item in items:
            if len(rows) == n:
                break
            row = {"id": f"r{len(rows):05d}"}
            if "image" in item:
                path = media / f"{len(rows):05d}.jpg"
                item["image"].convert("RGB").save(path, "JPEG", quality=90)
                row["image"] = str(path)
            if "text" in item:
                row["text"] = item["text"]
            rows.append(row)
        variant += 1
    table = tmp / f"set{k}.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def _manifest_run(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["runs"][-1]


def job(table: Path, out: Path, args: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(CLI + ["index", str(table), "--out", str(out), "--chunk-size", str(CHUNK),
                                 "--no-progress", *args], capture_output=True, text=True, env=env,
                          timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"[bench index] job failed ({proc.returncode}): {proc.stderr[-3000:]}")
    run = _manifest_run(out)
    return {"wall_s": wall, "work_s": run["work_seconds"], "rows": run["rows_embedded"],
            "items_per_s": run["rows_embedded"] / run["work_seconds"], "chunks": run["chunks_done"]}


def process_call(ckpt: str, table: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROCESS_SCRIPT, ckpt, str(table)], capture_output=True,
                          text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"[bench index] process() failed: {proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "work_s": r["seconds"], "rows": r["items"], "items_per_s": r["items"] / r["seconds"]}


def resume(table: Path, out: Path, ckpt: str, env: dict, chunks: int) -> dict:
    """Kill a local job's process group at half its chunks, then rerun it."""
    cmd = CLI + ["index", str(table), "--out", str(out), "--chunk-size", str(CHUNK), "--no-progress",
                 "--model", ckpt, *ENGINE]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    done = out / "done"
    while not (done.exists() and len(list(done.glob("*.json"))) >= chunks // 2):
        if proc.poll() is not None:
            raise SystemExit("[bench index] the job to kill ended first")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_s = time.perf_counter() - t0
    at_kill = len(list(done.glob("*.json")))
    second = job(table, out, ["--model", ckpt, *ENGINE], env)
    return {"killed_after_s": killed_s, "chunks_at_kill": at_kill, "chunks_total": chunks,
            "rerun_wall_s": second["wall_s"], "rerun_work_s": second["work_s"],
            "rerun_chunks": second["chunks"], "recomputed_chunks": second["chunks"] - (chunks - at_kill)}


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def run(out: Path, *, n: int = 1000, rounds: int = 2) -> dict:
    from qwen3vl_vllm.ops.launcher import ServerProcess, vllm_env
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    sys.path.insert(0, str(HERE))
    import run as bench_run

    ckpt = str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind="embedding", size="tiny"))
    env = {**vllm_env(), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    tmp = out / "media"
    chunks = -(-n // CHUNK)
    import datetime

    res: dict = {"mode": "index", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "command": f"./launch.sh bench index (python benchmarks/run.py index --n {n} --rounds {rounds})",
                 "n": n, "rounds": rounds, "chunk_size": CHUNK,
                 "machine": bench_run.machine(), "versions": bench_run.versions(), "rows": {}}
    per: dict[str, list[dict]] = {k: [] for k in ("process", "local", "servers", "ray")}
    resumes = []
    t0 = time.monotonic()
    with ServerProcess(ckpt, extra_args=bench_run.SIZING, env=bench_run.server_env(),
                       log_path=out / "logs" / "index-server.log") as srv:
        for k in range(rounds):
            table = write_set(tmp, k, n)
            order = ["process", "local", "servers", "ray"]
            for name in (order if k % 2 == 0 else order[::-1]):
                target = out / "jobs" / f"{name}-{k}"
                if name == "process":
                    r = process_call(ckpt, table, env)
                elif name == "local":
                    r = job(table, target, ["--model", ckpt, *ENGINE], env)
                elif name == "servers":
                    r = job(table, target, ["--model", srv.model, "--backend", "servers", "--servers",
                                            srv.base_url, "--concurrency", "16"], env)
                else:
                    r = job(table, target, ["--model", ckpt, *ENGINE, "--backend", "ray", "--actors", "2",
                                            "--actor-cpus", "1"], env)
                per[name].append(r)
                print(f"[bench index] round {k} {name}: {json.dumps(r)} ({time.monotonic() - t0:.0f}s)",
                      flush=True)
            resumes.append(resume(table, out / "jobs" / f"resume-{k}", ckpt, env, chunks))
            print(f"[bench index] round {k} resume: {json.dumps(resumes[-1])}", flush=True)
    base = [r["items_per_s"] for r in per["process"]]
    for name, rs in per.items():
        ips = [r["items_per_s"] for r in rs]
        res["rows"][name] = {"items_per_s": _summary(ips), "wall_s": _summary([r["wall_s"] for r in rs]),
                             "vs_process": _summary([a / b for a, b in zip(ips, base)])}
    local_work = [r["work_s"] for r in per["local"]]
    res["resume"] = {"runs": resumes,
                     "rerun_work_vs_half_uninterrupted": _summary(
                         [r["rerun_work_s"] / (w * (1 - r["chunks_at_kill"] / r["chunks_total"]))
                          for r, w in zip(resumes, local_work)]),
                     "recomputed_chunks": [r["recomputed_chunks"] for r in resumes]}
    res["seconds"] = time.monotonic() - t0
    return res


def markdown(res: dict) -> str:
    m, v = res["machine"], res["versions"]
    lines = [f"*Run of {res.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), "
             f"vLLM {v.get('vllm', '?')}, tiny float32 checkpoint; `{res.get('command', 'benchmarks/run.py index')}`. "
             f"{res['n']} mixed items per round, {res['rounds']} rounds, chunks of {res['chunk_size']}.*", "",
             "| backend | items/s (median, range) | vs process() | wall s (median) |", "|---|---|---|---|"]
    for name, row in res["rows"].items():
        ips, vs = row["items_per_s"], row["vs_process"]
        lines.append(f"| {name} | {ips['median']:.1f} ({ips['min']:.1f}-{ips['max']:.1f}) | "
                     f"{vs['median']:.2f}x ({vs['min']:.2f}-{vs['max']:.2f}) | {row['wall_s']['median']:.0f} |")
    r = res["resume"]
    lines += ["", "Resume after SIGKILL of the job's process group at half its chunks: "
              f"recomputed chunks {r['recomputed_chunks']}; the rerun's work / the uninterrupted run's "
              f"for the same remaining half: {r['rerun_work_vs_half_uninterrupted']['median']:.2f}x "
              f"({r['rerun_work_vs_half_uninterrupted']['min']:.2f}-{r['rerun_work_vs_half_uninterrupted']['max']:.2f}); "
              f"rerun wall (engine start included): "
              f"{statistics.median([x['rerun_wall_s'] for x in r['runs']]):.0f} s."]
    return "\n".join(lines)


def main(out: Path, n: int, rounds: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    res = run(out, n=n, rounds=rounds)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    text = markdown(res)
    (out / "results.md").write_text(text + "\n")
    print(text)
    print(f"[bench index] wrote {out}/results.json and results.md in {res['seconds']:.0f}s")
    return 0
