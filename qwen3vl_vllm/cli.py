"""The ``qwen3vl-vllm`` command. Thin: parses arguments and imports the module that does the work.

Example::

    qwen3vl-vllm make-checkpoint /tmp/ckpt/Qwen3-VL-Embedding-tiny --kind embedding --size tiny
    qwen3vl-vllm demo
"""

from __future__ import annotations

import argparse
import sys


def _make_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import build_checkpoint

    path = build_checkpoint(args.dir, kind=args.kind, size=args.size, seed=args.seed)
    print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    try:
        return run(root=args.root)
    except Exception as e:  # noqa: BLE001
        print(f"[demo] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen3vl-vllm",
                                     description="Serve Qwen3-VL-Embedding/Reranker on vLLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-checkpoint", help="write a random Qwen3-VL checkpoint (no download)")
    mk.add_argument("dir")
    mk.add_argument("--kind", choices=["embedding", "reranker", "instruct"], default="embedding")
    mk.add_argument("--size", choices=["tiny", "2b"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_make_checkpoint)
    demo = sub.add_parser("demo", help="tiny checkpoint, embedding server, client, similarity matrix")
    demo.add_argument("--root", default=".cache", help="where checkpoints and logs go")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
