"""What the plugin's ``input`` path costs against ``messages``, on the same plugin server.

A bare ``input`` string is turned into the reference's conversation and rendered by the chat
path (``serving/embed_inputs``); a ``messages`` request with the reference's system turn and
``add_generation_prompt`` (what plain vLLM needs) goes through the chat path directly. Both give
the same vector (the frontend benchmark checks both against the offline API). This sends fresh short texts (``frontend.make_items``) both ways to one plugin
server, in alternating order over ``--rounds`` rounds at c = 1 and 8, and reports the server's
CPU per text by process (``psutil``) and texts/s, medians and ranges, to JSON. Nothing is
asserted on speed.

    .venv/bin/python benchmarks/text_paths.py --rounds 4 --out benchmarks/results/text-paths
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PATHS = {"input": "plugin", "messages": "plain"}  # request shape -> frontend.bodies' side
LEVELS = (1, 8)
REQUESTS = 96


def run(out: Path, rounds: int) -> dict:
    import frontend
    from qwen3vl_vllm.ops.launcher import ServerProcess
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from run import SIZING, served_model, server_env

    ckpt = str(ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind="embedding", size="tiny"))
    rows: dict[str, list[dict]] = {}
    with ServerProcess(ckpt, extra_args=SIZING, env=server_env(), log_path=out / "server.log") as srv:
        model = served_model(srv.base_url)
        for r in range(rounds):
            for shape in (list(PATHS) if r % 2 == 0 else list(PATHS)[::-1]):
                for c in LEVELS:
                    items = frontend.make_items("text", REQUESTS, 5000 + 10 * r + c, out / "media")
                    reqs = frontend.bodies("text", PATHS[shape], items, model, srv.base_url)
                    rows.setdefault(f"{shape} c={c}", []).append(
                        frontend.measure_server(srv, "/embeddings", reqs, 1, c))
    return {"rounds": rounds, "requests_per_level": REQUESTS,
            "rows": {key: frontend._level_summary(got) for key, got in rows.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "text-paths"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(out, args.rounds)
    (out / "text_paths.json").write_text(json.dumps(res, indent=1))
    for key, row in res["rows"].items():
        cpu, api = row["cpu_ms_per_item"], row["by_process"].get("api_server", {"median": float("nan")})
        print(f"{key:12s} {row['items_per_s']['median']:7.1f} texts/s, {cpu['median']:.2f} ms CPU per text "
              f"({cpu['min']:.2f}-{cpu['max']:.2f}), API server {api['median']:.2f} ms")
    print(f"[text_paths] wrote {out}/text_paths.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
