"""What each way of sending a short text costs a plugin server, and what a server setting changes.

Shapes, all giving the same vector (checked at the start: cosine to the first shape):

- ``input``: a bare string, as every OpenAI client sends it. The plugin turns it into the
  reference's conversation and renders it with its template (``serving/embed_inputs``);
- ``messages``: the reference's system turn and ``add_generation_prompt`` (what plain vLLM
  needs), through vLLM's chat path;
- ``raw``: the reference prompt rendered here and sent with ``raw_prompt: true``, so the server
  only tokenises it (the floor for the ``input`` path).

``--variant NAME:ENV=VALUE[,ENV=VALUE]`` (repeatable) starts one plugin server per variant, with
those environment overrides, and measures each in turn while the others are paused
(``run.paused``), so settings are compared within one run on this shared machine. ``--plain``
adds plain vLLM with the hand flags (``run.plain_args``), sent the ``messages`` shape only (the
one that gives the reference's vector there), as the variant ``plain``. Fresh texts
(``frontend.make_items``) per round and level; rounds alternate the order. Reports the server's
CPU per text by process (``psutil``) and texts/s, medians and ranges, to JSON, and each
variant's texts/s over plain vLLM's (or the first variant's) paired round by round, with a 95 %
bootstrap interval of the median ratio. Many short rounds (``--rounds 40 --requests 40``) pair
the sides closer in time than a few long ones on a machine whose speed drifts. Nothing is
asserted on speed.

``--kind`` (one of ``frontend.KINDS``, e.g. ``rerank-1x20`` or ``screenshot``) sends that
workload instead of texts, in the bodies ``frontend.bodies`` builds for each side (shape
``plugin``, or ``plain`` for plain vLLM): the same variant A/B for a request that takes more than
one step, checked the same way (scores to within ``1 - worst`` of the first variant's).

    .venv/bin/python benchmarks/text_paths.py --rounds 4 --out benchmarks/results/text-paths
    .venv/bin/python benchmarks/text_paths.py --shapes input --requests 240 \
        --variant pool:QWEN3VL_INLINE_RENDER_CHARS=0 --variant inline:
    .venv/bin/python benchmarks/text_paths.py --shapes input --plain --variant plugin:
    .venv/bin/python benchmarks/text_paths.py --kind rerank-1x20 --requests 6 --levels 1 \
        --variant on: --variant off:QWEN3VL_SHM_SPIN_AFTER_WRITE=0
    .venv/bin/python benchmarks/text_paths.py --kind photo-512 --plain --levels 1 --rounds 16 \
        --requests 16 --variant plugin: --offline-engine
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from frontend import ratio_summary  # noqa: E402 - the name docs/serving-cost.md gives for the published files

PATHS = {"input": "plugin", "messages": "plain", "raw": "plugin"}  # request shape -> frontend.bodies' side
LEVELS = (1, 8)
REQUESTS = 96
PLAIN = "plain"  # the variant name of plain vLLM (--plain), measured with the messages shape only


@functools.lru_cache(maxsize=1)
def _embedding_template():
    import jinja2

    from qwen3vl_vllm.prompts.engine import chat_template_text

    return jinja2.Environment().from_string(chat_template_text("embedding"))


def raw_prompt(text: str) -> str:
    """The reference prompt of ``{"text": text}``, rendered here from the package's template (what
    the ``raw`` shape sends pre-built, so the server tokenises it with no chat rendering)."""
    from qwen3vl_vllm.prompts.inputs import embedding_conversation

    return _embedding_template().render(messages=embedding_conversation({"text": text}))


def shape_bodies(shape: str, items: list, model: str, base_url: str, kind: str = "text") -> list[dict]:
    """The requests carrying ``items`` in ``shape``: a text shape (``PATHS``), or for another
    ``kind`` the side (``plugin``/``plain``) whose bodies ``frontend.bodies`` builds."""
    import frontend

    if kind != "text":
        return frontend.bodies(kind, shape, items, model, base_url)
    reqs = frontend.bodies("text", PATHS[shape], items, model, base_url)
    if shape == "raw":
        reqs = [dict(b, input=raw_prompt(b["input"]), raw_prompt=True) for b in reqs]
    return reqs


def variant_shapes(name: str, shapes: tuple, kind: str = "text") -> tuple:
    """The shapes a variant is sent: plain vLLM only ``messages`` (its ``input`` is not the
    reference's vector, and it has no ``raw_prompt``); for another ``kind``, its side."""
    if kind != "text":
        return (PLAIN,) if name == PLAIN else ("plugin",)
    return ("messages",) if name == PLAIN else shapes


def run(out: Path, rounds: int, requests: int = REQUESTS, levels: tuple = LEVELS,
        shapes: tuple = tuple(PATHS), variants: dict | None = None, plain: bool = False,
        kind: str = "text") -> dict:
    """``variants``: name -> environment overrides, one plugin server each (None: one server as
    configured); ``plain``: plain vLLM beside them (variant ``PLAIN``). Servers not being
    measured are paused (``run.paused``); rounds alternate the order of variants and shapes.
    ``kind``: the workload (``frontend.KINDS``); ``requests`` then counts requests, not items."""
    import frontend
    from qwen3vl_vllm.ops.launcher import ServerProcess, free_port
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from run import SIZING, paused, plain_args, served_model, server_env

    model_kind = frontend.KINDS[kind]["model"]
    per_request = frontend.KINDS[kind]["per_request"]
    path = "/v1/rerank" if kind == "rerank-1x20" else "/embeddings"
    ckpt = str(ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind=model_kind, size="tiny"))
    variants = dict(variants or {"": {}})
    if PLAIN in variants:
        raise SystemExit(f"--variant {PLAIN!r} is the name --plain uses; pick another")
    rows: dict[str, list[dict]] = {}
    worst: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, env in variants.items():
            log = out / (f"server-{name}.log" if name else "server.log")
            servers[name] = stack.enter_context(
                ServerProcess(ckpt, extra_args=SIZING, env=dict(server_env(), **env), log_path=log))
        if plain:
            port = free_port()
            servers[PLAIN] = stack.enter_context(ServerProcess(
                ckpt, port=port, env=dict(server_env(), VLLM_PLUGINS="__none__"),
                log_path=out / f"server-{PLAIN}.log", full_args=plain_args(model_kind, ckpt, port)))
            variants[PLAIN] = {"VLLM_PLUGINS": "__none__"}
        models = {name: served_model(srv.base_url) for name, srv in servers.items()}
        base = {name: srv.base_url if path == "/embeddings" else srv.url for name, srv in servers.items()}
        probe = frontend.make_items(kind, 4 if per_request == 1 else 2, 4999, out / "media")
        reference = None
        for name, srv in servers.items():
            for shape in variant_shapes(name, shapes, kind):
                got = frontend.answers(base[name], path, shape_bodies(shape, probe, models[name], srv.base_url, kind))
                reference = reference or got
                worst[f"{name} {shape}".strip()] = frontend.agreement(kind, got, reference)
        print(f"[text_paths] worst cosine to the first path: {worst}")
        for r in range(rounds):
            order = [(name, shape) for name in variants for shape in variant_shapes(name, shapes, kind)]
            for name, shape in (order if r % 2 == 0 else order[::-1]):
                srv = servers[name]
                with contextlib.ExitStack() as pause:
                    for other, o in servers.items():
                        if other != name:
                            pause.enter_context(paused(o))
                    for c in levels:
                        items = frontend.make_items(kind, requests, 5000 + 10 * r + c, out / "media")
                        reqs = shape_bodies(shape, items, models[name], srv.base_url, kind)
                        rows.setdefault(f"{name} {shape} c={c}".strip(), []).append(
                            frontend.measure_server(srv, path, reqs, per_request, c))
    return {"kind": kind, "rounds": rounds, "requests_per_level": requests, "variants": variants,
            "worst_cosine_to_first": worst,
            "rows": {key: frontend._level_summary(got) for key, got in rows.items()},
            "paired": paired(rows, plain)}


def paired(rows: dict, plain: bool) -> dict:
    """Each row's items/s over the first row's (or, with ``plain``, plain vLLM's) at the same
    level, round by round: drift slower than a round cancels in the ratio of a pair. With the
    median of the ratios, a 95 % bootstrap interval of that median (``ci95``)."""
    out = {}
    for key, got in rows.items():
        variant, level = key.rsplit(" c=", 1)
        base = next((k for k in rows if k.endswith(f" c={level}") and (not plain or k.startswith(PLAIN + " "))), None)
        if base is None or base == key:
            continue
        ratios = [a["items_per_s"] / b["items_per_s"] for a, b in zip(got, rows[base])]
        out[f"{variant} / {base.rsplit(' c=', 1)[0]} c={level}"] = ratio_summary(ratios)
    return out


def _variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    env = {}
    for pair in filter(None, assignments.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: write NAME:ENV=VALUE[,ENV=VALUE]")
        env[key] = value
    return name, env


@contextlib.contextmanager
def _offline_engine_held(kind: str, out: Path):
    """The frontend run's offline engine for ``kind``'s model, built here and fed one item
    (``frontend.run`` holds one in its process through every server's rounds)."""
    import frontend
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    model_kind = frontend.KINDS[kind]["model"]
    ckpt = str(ensure_checkpoint(HERE.parent / ".cache" / "checkpoints", kind=model_kind, size="tiny"))
    engine = frontend._offline_engine(model_kind, ckpt)
    try:
        frontend._offline_answers(engine, kind, frontend.make_items(kind, 1, 4998, out / "media"))
        yield engine
    finally:
        frontend._close(engine)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "text-paths"))
    ap.add_argument("--requests", type=int, default=REQUESTS, help="requests per level and round")
    ap.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrencies")
    ap.add_argument("--shapes", nargs="+", default=list(PATHS), choices=list(PATHS), help="request shapes")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:ENV=VALUE[,ENV=VALUE]",
                    help="a plugin server with these environment overrides (repeat to compare)")
    ap.add_argument("--kind", default="text", help="the workload (benchmarks/frontend.py KINDS); "
                    "other than text, each variant is sent the plugin's bodies and plain vLLM its own")
    ap.add_argument("--plain", action="store_true",
                    help=f"also plain vLLM with the hand flags (variant {PLAIN!r}, messages shape)")
    ap.add_argument("--offline-engine", action="store_true",
                    help="hold the offline API's engine in this (the client's) process while measuring, "
                    "as benchmarks/frontend.py does, to see whether it changes a row")
    args = ap.parse_args(argv)
    import frontend

    if args.kind not in frontend.KINDS:
        ap.error(f"--kind {args.kind!r}: pick one of {', '.join(frontend.KINDS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _offline_engine_held(args.kind, out) if args.offline_engine else contextlib.nullcontext():
        res = run(out, args.rounds, args.requests, tuple(args.levels), tuple(args.shapes),
                  dict(_variant(v) for v in args.variant) or None, plain=args.plain, kind=args.kind)
    (out / "text_paths.json").write_text(json.dumps(res, indent=1))
    for key, row in res["rows"].items():
        cpu, api = row["cpu_ms_per_item"], row["by_process"].get("api_server", {"median": float("nan")})
        print(f"{key:24s} {row['items_per_s']['median']:7.1f} items/s, {cpu['median']:.2f} ms CPU per item "
              f"({cpu['min']:.2f}-{cpu['max']:.2f}), API server {api['median']:.2f} ms")
    for key, row in res["paired"].items():
        print(f"{key:40s} items/s ratio, paired by round: median {row['median']:.3f} "
              f"(95 % interval {row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}; range {row['min']:.3f}-{row['max']:.3f})")
    print(f"[text_paths] wrote {out}/text_paths.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
