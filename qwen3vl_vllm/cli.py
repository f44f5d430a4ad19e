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


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .launcher import dry_run_command, resolve_model, run_config, vllm_args

    try:
        cfg = load_config(args.config, args.set or [])
        model = resolve_model(cfg.model, build=not args.dry_run)
        if args.dry_run:
            print(dry_run_command(cfg, model))
            return 0
        vllm_args(cfg, model)  # validate (kind detection) before starting anything
    except ConfigError as e:
        print(f"qwen3vl-vllm serve: config error: {e}", file=sys.stderr)
        return 2
    return run_config(cfg, model, log=lambda m: print(m, flush=True))


def _deploy(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .deploy import k8s_manifests

    try:
        cfg = load_config(args.config, args.set or [])
        text = k8s_manifests(cfg, config_text=open(args.config).read())
    except ConfigError as e:
        print(f"qwen3vl-vllm deploy: config error: {e}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


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
    serve = sub.add_parser("serve", help="start vllm serve from a YAML config (configs/*.yaml)")
    serve.add_argument("--config", required=True, help="YAML file, e.g. configs/embedding-2b.yaml")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set server.port=9000 (repeatable)")
    serve.add_argument("--dry-run", action="store_true",
                       help="print the equivalent `vllm serve` command line and exit")
    serve.set_defaults(func=_serve)
    deploy = sub.add_parser("deploy", help="deployment manifests from a config")
    deploy.add_argument("target", choices=["k8s"])
    deploy.add_argument("--config", required=True)
    deploy.add_argument("--set", action="append", metavar="KEY=VALUE")
    deploy.add_argument("-o", "--output", help="write here instead of stdout")
    deploy.set_defaults(func=_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
