"""Where the time goes: py-spy samples of the reference and of the offline API on one workload.

    python benchmarks/profile_offline.py --workload rerank-1x20 [--loops 5] [--out DIR]

After a warm-up, the process samples itself (and vLLM's engine processes) with py-spy while
``process()`` runs on ``--loops`` sets never seen before (so no cache hits), first for the reference, then for the offline API on vLLM.
It writes the raw stacks and a summary (``profile-<workload>.json`` / ``.md``): for each side,
the share of samples per process and the functions with the most inclusive time, grouped into
stages (image resize, HF processor, model forward, scheduling, ...). Needs ``py-spy`` (the
``bench`` extra) and permission to ptrace the own process tree (default on Linux for children).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

# stage -> substrings of a frame ("function (file:line)"); first match from the leaf upwards wins
STAGES = [
    ("busy-wait for work (vLLM shm spin)", ("sched_yield", "SpinCondition.wait", "acquire_read",
                                            "memory_fence", "timeout_ms (vllm/distributed")),
    ("image resize (PIL)", ("resize (PIL/Image.py", "Image.resize", "ImagingCore")),
    ("image decode/encode", ("PngImagePlugin", "ImageFile.load", "Image.open", "encode_png")),
    ("video decode", ("av/", "read_video_file", "decode_video")),
    ("HF image/video processor", ("image_processing_", "video_processing_", "processing_qwen3_vl",
                                  "BaseImageProcessorFast")),
    ("tokenizer / chat template", ("tokenization_", "apply_chat_template", "jinja2")),
    ("vision tower forward", ("visual", "Qwen3VLVision", "Qwen3_Vision", "vision_model",
                              "vit_attn_wrappers", "mm_input_norm", "layers/conv.py")),
    ("language model forward", ("Qwen3Model", "Qwen3VLTextModel", "language_model", "model_executor/models",
                                "modeling_qwen3_vl")),
    ("vLLM scheduling / IPC", ("v1/engine", "v1/core/sched", "msgspec", "zmq", "multiproc_executor",
                               "shm_broadcast")),
    ("vLLM input processing", ("multimodal/processing", "renderers/", "inputs/preprocess")),
]


def _stage(stack: list[str]) -> str:
    from account import classify

    return classify(stack, STAGES, "other")


def summarize(raw: Path) -> dict:
    procs, stages, inclusive, leaf = Counter(), Counter(), Counter(), Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_s, _, count_s = line.rpartition(" ")
        if not stack_s or not count_s.isdigit():
            continue
        n = int(count_s)
        stack = stack_s.split(";")
        procs_in_stack = [f for f in stack if f.startswith("process ")]
        proc = procs_in_stack[-1] if procs_in_stack else "main"  # the innermost process
        label = proc.split('"')[1][:60] if '"' in proc else proc
        procs[label] += n
        if any("idle" in f or "wait (threading" in f or "select (selectors" in f or "poll" in f
               for f in stack[-2:]):
            stages["idle / waiting"] += n
        else:
            stages[_stage(stack)] += n
        for f in set(stack):
            inclusive[f] += n
        leaf[stack[-1]] += n
        total += n
    share = lambda c: [(k, round(v / total, 3)) for k, v in c.most_common(15)]  # noqa: E731
    return {"samples": total, "processes": share(procs), "stages": share(stages),
            "inclusive_top": share(inclusive), "self_top": share(leaf)}


def record(out: Path, fn) -> tuple[Path, float]:
    """Run ``fn`` under py-spy; (raw stacks file, seconds ``fn`` took, attaching excluded)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install 'qwen3vl-vllm[bench]' (or pip install py-spy)")
    raw = out.with_suffix(".txt")
    proc = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--subprocesses", "--rate", "100",
                             "--format", "raw", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.5)  # let py-spy attach
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
    proc.wait(timeout=60)
    if not raw.exists():
        raise SystemExit(f"py-spy wrote nothing: {proc.stderr.read().decode()[-800:]}")
    print(f"[profile] {out.name}: {elapsed:.2f}s sampled", flush=True)
    return raw, elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="rerank-1x20")
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "profile"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    kind, inputs = workloads.build(args.workload, out / "media")  # warm-up set
    # every profiled call gets a set neither side has seen (no cache hits from a previous call)
    fresh = [workloads.build(args.workload, out / "media", variant=k + 1)[1] for k in range(args.loops)]
    ckpt = str(ensure_checkpoint(ROOT / ".cache" / "checkpoints", kind=kind, size="tiny"))
    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.25, "max_num_seqs": 64}
    if kind == "reranker":
        from qwen3vl_vllm.offline.engines import Qwen3VLReranker as Engine
        from qwen3vl_vllm.testing.reference import ReferenceReranker as Ref
    else:
        from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder as Engine
        from qwen3vl_vllm.testing.reference import ReferenceEmbedder as Ref

    result = {"workload": args.workload, "loops": args.loops}
    ref = Ref(ckpt, dtype="float32")
    ref.process(inputs)
    raw, seconds = record(out / f"profile-{args.workload}-reference", lambda: [ref.process(x) for x in fresh])
    result["reference"] = {"seconds_per_call": seconds / args.loops, **summarize(raw)}
    del ref
    with Engine(ckpt, dtype="float32", **engine) as model:
        model.process(inputs)
        raw, seconds = record(out / f"profile-{args.workload}-vllm", lambda: [model.process(x) for x in fresh])
        result["vllm"] = {"seconds_per_call": seconds / args.loops, **summarize(raw)}
    (out / f"profile-{args.workload}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Profile: {args.workload} ({args.loops} calls each, tiny checkpoint, float32)", ""]
    for side in ("reference", "vllm"):
        r = result[side]
        lines += [f"## {side}: {r['seconds_per_call'] * 1000:.0f} ms per call (incl. sampling overhead), "
                  f"{r['samples']} samples", "", "| stage | share |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in r["stages"]]
        lines += ["", "| process | share |", "|---|---|"] + [f"| {k} | {v:.1%} |" for k, v in r["processes"]]
        lines += ["", "| function (inclusive) | share |", "|---|---|"]
        lines += [f"| `{k[:110]}` | {v:.1%} |" for k, v in r["inclusive_top"]]
        lines.append("")
    (out / f"profile-{args.workload}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
