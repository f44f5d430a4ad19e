"""What torch's OpenMP pool spends waiting after a parallel region, per wait policy.

vLLM preloads torch's GNU OpenMP (``libgomp``) into its CPU worker and sets no wait policy for
it (Intel's OpenMP gets ``KMP_BLOCKTIME=5``). libgomp's default spins 300,000 times at a
barrier before it sleeps, so a pool thread burns CPU after each parallel region that is
followed by a pause, as a server's worker is between steps. This script measures that cost in
isolation: each policy runs in a fresh process (libgomp reads its environment once, at load)
with 2 torch threads, timing the process CPU of ``--regions`` matmuls each followed by a
``--pause-ms`` sleep; the policies alternate over ``--rounds``. Medians and ranges to JSON, and
each policy's CPU over the default's, paired by round. Nothing is asserted.

On a server the same settings changed nothing measurable (docs/serving-cost.md, "Measured and
not kept"): this is the isolated effect, not a serving figure.

    .venv/bin/python benchmarks/omp_wait.py --rounds 5 --out benchmarks/results/omp-wait
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frontend import ratio_summary, summarise  # noqa: E402 - one summary for every benchmark here
POLICIES = {"default": {}, "spin-10000": {"GOMP_SPINCOUNT": "10000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
CHILD = """
import sys, time, torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
for _ in range(20):
    a @ a
regions, pause = int(sys.argv[1]), float(sys.argv[2]) / 1e3
t0 = time.process_time()
for _ in range(regions):
    a @ a
    time.sleep(pause)
print((time.process_time() - t0) / regions * 1e3)
"""


def one(policy: str, regions: int, pause_ms: float) -> float:
    """CPU ms per region-and-pause in a fresh process with ``policy``'s environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(POLICIES[policy])
    out = subprocess.run([sys.executable, "-c", CHILD, str(regions), str(pause_ms)], env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--regions", type=int, default=40)
    ap.add_argument("--pause-ms", type=float, default=30.0)
    ap.add_argument("--out", default=str(HERE / "results" / "omp-wait"))
    args = ap.parse_args(argv)
    names = list(POLICIES)
    got: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:  # alternate the order: the machine drifts
            got[n].append(one(n, args.regions, args.pause_ms))
    res = {"regions": args.regions, "pause_ms": args.pause_ms, "rounds": args.rounds, "policies": {}}
    for n in names:
        cpu = dict(summarise(got[n]), rounds=got[n])
        vs = ratio_summary([a / b for a, b in zip(got[n], got["default"])])
        res["policies"][n] = {"env": POLICIES[n], "cpu_ms": cpu, "vs_default": vs}
        print(f"{n:12s} {cpu['median']:6.2f} ms CPU per region and pause ({cpu['min']:.2f}-{cpu['max']:.2f}), "
              f"{vs['median']:.2f}x the default's (95 % {vs['ci95'][0]:.2f}-{vs['ci95'][1]:.2f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "omp_wait.json").write_text(json.dumps(res, indent=1))
    print(f"[omp_wait] wrote {out / 'omp_wait.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
