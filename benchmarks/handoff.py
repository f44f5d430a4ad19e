"""How long a write to shared memory takes to reach a waiting reader in another process, by the
way the reader waits: spinning on ``sched_yield`` (vLLM's readers in their busy window), napping
as ``serving/shm_spin`` naps (5 % of the time waited, 0.1-1 ms), or asleep on the queue's wake
word (``serving/shm_wake``, a futex).

A writer process writes every ``gap`` seconds (a timestamp and a sequence number in a shared
page) and bumps the wake word; the reader notes when it saw each write. Gaps of 1 ms (back-to-back
steps) and 8 ms (one request at a time on this machine: the time between a worker's steps).
Rounds alternate the order of the ways; medians and ranges of the per-round medians, to JSON.
Nothing is asserted.

    .venv/bin/python benchmarks/handoff.py --rounds 3 --writes 300 --out benchmarks/results/handoff
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

WAYS = ("spin", "nap", "wake")
GAPS = (0.001, 0.008)


def _reader(way: str, page, address: str, writes: int, conn) -> None:
    from qwen3vl_vllm.serving import shm_spin, shm_wake

    word = shm_wake.WakeWord.attach(address)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    seq = ctypes.c_uint64.from_address(base)
    stamp = ctypes.c_double.from_address(base + 8)
    ack = ctypes.c_uint64.from_address(base + 16)
    last, lat = 0, []
    conn.send("ready")
    while last < writes:
        t0 = time.monotonic()
        seen = word.seq()
        while seq.value == last:
            if way == "spin":
                os.sched_yield()
            elif way == "nap":
                time.sleep(shm_spin.nap_s(time.monotonic() - t0, shm_spin.NAP_S, shm_spin.NAP_MAX_S))
            else:
                word.sleep(seen, shm_spin.WAKE_TIMEOUT_S)
                seen = word.seq()
        last = seq.value
        lat.append(time.perf_counter() - stamp.value)
        ack.value = last
    word.close()
    conn.send(lat)


def one(way: str, gap: float, writes: int) -> dict:
    from qwen3vl_vllm.serving import shm_wake

    address = f"ipc:///tmp/handoff-{uuid.uuid4().hex}"
    word = shm_wake.WakeWord.create(address)
    page = mmap.mmap(-1, mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    seq = ctypes.c_uint64.from_address(base)
    stamp = ctypes.c_double.from_address(base + 8)
    ack = ctypes.c_uint64.from_address(base + 16)
    ctx = multiprocessing.get_context("fork")  # the anonymous page is shared with a forked child
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_reader, args=(way, page, address, writes, child))
    proc.start()
    try:
        assert parent.recv() == "ready"
        for i in range(1, writes + 1):
            time.sleep(gap)
            stamp.value = time.perf_counter()
            seq.value = i
            word.bump()
            while ack.value != i:
                time.sleep(0.0002)
        lat = parent.recv()
    finally:
        proc.join(30)
        del seq, stamp, ack, base
        word.close()
    lat.sort()
    return {"median_us": lat[len(lat) // 2] * 1e6, "p90_us": lat[int(len(lat) * 0.9)] * 1e6,
            "mean_us": statistics.mean(lat) * 1e6}


def run(rounds: int, writes: int) -> dict:
    per: dict[str, list[dict]] = {}
    for r in range(rounds):
        for way in (WAYS if r % 2 == 0 else WAYS[::-1]):
            for gap in GAPS:
                per.setdefault(f"{way} gap={gap * 1000:g}ms", []).append(one(way, gap, writes))
    rows = {}
    for key, got in per.items():
        meds = [g["median_us"] for g in got]
        rows[key] = {"median_us": statistics.median(meds), "min_us": min(meds), "max_us": max(meds),
                     "p90_us": statistics.median(g["p90_us"] for g in got), "rounds": len(got)}
    return {"rounds": rounds, "writes_per_round": writes, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writes", type=int, default=300)
    ap.add_argument("--out", default=str(HERE / "results" / "handoff"))
    args = ap.parse_args(argv)
    res = run(args.rounds, args.writes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "handoff.json").write_text(json.dumps(res, indent=2))
    for key, row in res["rows"].items():
        print(f"{key:16s} median {row['median_us']:7.1f} us ({row['min_us']:.1f}-{row['max_us']:.1f}), "
              f"p90 {row['p90_us']:.1f} us")
    print(f"[handoff] wrote {out / 'handoff.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
