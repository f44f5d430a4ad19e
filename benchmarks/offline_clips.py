"""Does the offline API gain from keeping video clips uint8? One engine, alternating rounds.

The offline engine hands vLLM each clip as uint8 (``fetch_video(..., uint8=True)``): the
reference rounds every resized frame to uint8 before its ``.float()``, so uint8 holds the same
values at a quarter of the bytes; vLLM's processor then rescales it. Two frontend runs a day apart
put the offline API's 10-frame lists at 115 and 136 ms of CPU per clip, so whether uint8 costs the
offline path anything could not be read from them. This measures it in one process: the same
engine embeds fresh 10-frame lists (``frontend.make_items``, new seeds every round: no cache
hits) with the engine's clips as uint8 (as shipped) and as float32 (``uint8=False``), in
alternating order, ``--per-call`` clips per ``process()`` call.

Reported per side: CPU ms per clip of this process and its engine children (median and range
over rounds), clips/s, and the worst cosine between the two sides' vectors on the same clips
(must be >= 0.999999). Written to JSON; nothing is asserted on speed.

    .venv/bin/python benchmarks/offline_clips.py --rounds 4 --out benchmarks/results/offline-clips
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SIDES = ("uint8", "float32")


@contextlib.contextmanager
def clips_as(side: str):
    """The offline engine's ``fetch_video`` with ``uint8`` forced to the side's value."""
    from qwen3vl_vllm.offline import engines

    original = engines.fetch_video
    engines.fetch_video = lambda *a, **kw: original(*a, **{**kw, "uint8": side == "uint8"})
    try:
        yield
    finally:
        engines.fetch_video = original


def one_round(engine, items: list, per_call: int) -> tuple[dict, list]:
    import frontend

    before = frontend.tree_cpu([os.getpid()], root_role="offline")
    t0 = time.perf_counter()
    vectors = []
    for k in range(0, len(items), per_call):
        vectors += [np.asarray(v, dtype="f4") for v in engine.process(items[k:k + per_call])]
    seconds = time.perf_counter() - t0
    cpu = frontend.delta(frontend.tree_cpu([os.getpid()], root_role="offline"), before)
    n = len(items)
    return {"cpu_ms_per_clip": sum(cpu.values()) * 1000 / n, "clips_per_s": n / seconds}, vectors


def run(out: Path, *, rounds: int, n: int, per_call: int) -> dict:
    import frontend
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = str(ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind="embedding", size="tiny"))
    engine = frontend._offline_engine("embedding", ckpt)
    tmp = out / "media"
    rows: dict[str, list[dict]] = {s: [] for s in SIDES}
    worst = 1.0
    try:
        for side in SIDES:  # warm both paths
            with clips_as(side):
                engine.process(frontend.make_items("frames-10", 2, 7, tmp))
        for r in range(rounds):
            items = frontend.make_items("frames-10", n, 1000 + r, tmp)
            got = {}
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                with clips_as(side):
                    row, got[side] = one_round(engine, items, per_call)
                rows[side].append(row)
            worst = min(worst, min(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                                   for a, b in zip(got["uint8"], got["float32"])))
    finally:
        frontend._close(engine)
    res = {"rounds": rounds, "clips_per_round": n, "per_call": per_call, "worst_cosine": worst,
           "sides": {s: {k: frontend.summarise([row[k] for row in v]) for k in v[0]} for s, v in rows.items()}}
    u, f = (res["sides"][s]["cpu_ms_per_clip"]["median"] for s in SIDES)
    res["uint8_cpu_vs_float32"] = u / f
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--n", type=int, default=16, help="clips per round")
    ap.add_argument("--per-call", type=int, default=8, help="clips per process() call")
    ap.add_argument("--out", default=str(HERE / "results" / "offline-clips"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(out, rounds=args.rounds, n=args.n, per_call=args.per_call)
    (out / "offline_clips.json").write_text(json.dumps(res, indent=1))
    for s in SIDES:
        c, ips = res["sides"][s]["cpu_ms_per_clip"], res["sides"][s]["clips_per_s"]
        print(f"{s:8s} {c['median']:.1f} ms/clip ({c['min']:.1f}-{c['max']:.1f}), "
              f"{ips['median']:.1f} clips/s ({ips['min']:.1f}-{ips['max']:.1f})")
    print(f"uint8 / float32 CPU: {res['uint8_cpu_vs_float32']:.2f}x; worst cosine {res['worst_cosine']:.7f}")
    print(f"[offline_clips] wrote {out}/offline_clips.json")
    return 0 if res["worst_cosine"] >= 0.999999 else 1


if __name__ == "__main__":
    sys.exit(main())
