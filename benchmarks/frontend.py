"""Serving cost: the CPU a server spends per item, split by process, against the offline API.

    ./launch.sh bench frontend                # 3 alternating rounds, every input kind (~20 min here)
    ./launch.sh bench frontend --rounds 1 --kinds text photo-512     # a smoke run

On a GPU the forward pass leaves the CPU, and what bounds the rate is the CPU the serving path
spends turning a request into model input and back. This measures it on the tiny checkpoints,
where the forward is small, for each input kind (``KINDS``), on three sides fed the same items:

- ``plugin``: ``vllm serve CKPT`` with the plugin and zero model flags;
- ``plain``: plain vLLM (``VLLM_PLUGINS=__none__``) with the hand flags, sent the request that
  gives the reference's vector (``messages`` with the system turn). A kind gets a plain column
  only where plain vLLM's vectors equal the offline API's (cosine >= 0.999999, measured here):
  a video file, a 64-text ``input`` batch or a resized screenshot have no such request;
- ``offline``: ``Qwen3VLEmbedder.process`` / ``Qwen3VLReranker.process`` on the same items, in
  this process (one batched call): the same preprocessing and forward, no serving.

Per side, kind and concurrency (1 and 8): items/s and *server CPU per item*, the CPU time of
each process of the server's tree (API server, engine core, any workers) from ``psutil`` before
and after, divided by the items. *Serving overhead* = server CPU per item - offline CPU per item.
Rounds alternate the sides' order; each round's items are new to every side (no cache answers);
the sides not being measured are paused (SIGSTOP), so they cannot take a core. Medians and ranges
over rounds go to ``frontend.json``, a plot to ``frontend.png``; ``account.py`` breaks the
plugin's milliseconds down. Nothing here asserts a time.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

PARITY = 0.999999  # the cosine a plain column must reach (and the plugin must keep)
LEVELS = (1, 8)

# kind -> what one request carries, and how many requests a level sends (c=1, c=8). Sized so a
# level lasts ~1-4 s on 2 cores: long enough for CPU deltas, short enough for 3 rounds.
KINDS = {
    "text":         {"model": "embedding", "per_request": 1, "requests": (48, 96)},
    "text-batch64": {"model": "embedding", "per_request": 64, "requests": (4, 8)},
    "photo-512":    {"model": "embedding", "per_request": 1, "requests": (24, 48)},
    "photo-1280":   {"model": "embedding", "per_request": 1, "requests": (6, 12)},
    "screenshot":   {"model": "embedding", "per_request": 1, "requests": (3, 6)},
    "frames-10":    {"model": "embedding", "per_request": 1, "requests": (8, 16)},
    "mp4":          {"model": "embedding", "per_request": 1, "requests": (8, 16)},
    "rerank-1x20":  {"model": "reranker", "per_request": 20, "requests": (4, 8)},
}
WORDS = ("river stone light market window garden letter engine silver morning paper forest harbor "
         "cloud station violin ladder orange winter bridge invoice chart query summary").split()


# ---------------------------------------------------------------- items (seeded, written to disk)

def _text(rng, lo: int = 6, hi: int = 16) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randint(100)) for _ in range(rng.randint(lo, hi + 1))) + "."


def _jpeg(img, path: Path, quality: int = 90) -> str:
    img.save(path, format="JPEG", quality=quality)
    return str(path)


def _screenshot(rng, w: int, h: int):
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (w, h), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    y = 24
    while y < h - 24:
        if rng.rand() < 0.1:
            draw.rectangle((40, y, w - 40, y + 90), outline=(40, 40, 40), fill=(230, 236, 245))
            y += 100
            continue
        draw.text((40, y), _text(rng, 8, 20), fill=(10, 10, 10))
        y += 22
    return page


def _mp4(rng, path: Path, frames: int = 8, w: int = 320, h: int = 240) -> str:
    import av
    from image_transport import photo

    base = photo(w, h, int(rng.randint(1 << 30)))
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            f = base.copy()
            f.paste((240, 60, 40), (10 + 20 * t, 60, 50 + 20 * t, 100))
            for p in s.encode(av.VideoFrame.from_image(f)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def make_items(kind: str, n: int, seed: int, tmp: Path) -> list:
    """``n`` requests' worth of inputs of ``kind`` (input dicts; a rerank set per request)."""
    import numpy as np

    from image_transport import photo

    rng = np.random.RandomState(seed)
    folder = tmp / f"{kind}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    per = KINDS[kind]["per_request"]
    if kind in ("text", "text-batch64"):
        return [{"text": _text(rng)} for _ in range(n * per)]
    if kind == "photo-512":
        return [{"image": _jpeg(photo(512, 512, seed * 1000 + i), folder / f"{i}.jpg")} for i in range(n)]
    if kind == "photo-1280":
        return [{"image": _jpeg(photo(1280, 960, seed * 1000 + i), folder / f"{i}.jpg")} for i in range(n)]
    if kind == "screenshot":
        out = []
        for i in range(n):
            p = folder / f"{i}.png"
            _screenshot(rng, 2600, 1900).save(p)
            out.append({"image": str(p)})
        return out
    if kind == "frames-10":
        out = []
        for i in range(n):
            base = photo(320, 240, seed * 1000 + i)
            paths = []
            for t in range(10):
                f = base.copy()
                f.paste((240, 60, 40), (10 + 25 * t, 60, 50 + 25 * t, 100))
                paths.append(_jpeg(f, folder / f"{i}-{t}.jpg"))
            out.append({"video": paths})
        return out
    if kind == "mp4":
        return [{"video": _mp4(rng, folder / f"{i}.mp4")} for i in range(n)]
    if kind == "rerank-1x20":
        import workloads

        return [workloads.build("rerank-1x20", tmp, variant=seed * 100 + i)[1] for i in range(n)]
    raise KeyError(kind)


# ---------------------------------------------------------------- request bodies per side

def bodies(kind: str, side: str, items: list, model: str, base_url: str) -> list[dict]:
    # base_url: the server's /v1 address (the rerank body is built by the package's client)
    """The requests that carry ``items``: the plugin gets what a zero-flag user sends (bare
    ``input`` strings for texts), plain vLLM the request that gives the reference's vector."""
    from run import embedding_bodies, rerank_body

    if kind == "rerank-1x20":
        return [rerank_body(base_url, x, model) for x in items]
    if kind == "text" and side == "plugin":
        return [{"model": model, "input": it["text"], "encoding_format": "base64"} for it in items]
    if kind == "text-batch64":
        per = KINDS[kind]["per_request"]
        return [{"model": model, "input": [it["text"] for it in items[k:k + per]], "encoding_format": "base64"}
                for k in range(0, len(items), per)]
    return embedding_bodies(items, model)


def _vectors(resp: dict) -> list:
    import numpy as np

    out = []
    for row in sorted(resp["data"], key=lambda d: d["index"]):
        e = row["embedding"]
        out.append(np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str) else np.asarray(e, "f4"))
    return out


def answers(base_url: str, path: str, reqs: list[dict]) -> list:
    """Vectors (embeddings) or scores (rerank) of each request, in order."""
    import httpx

    out = []
    with httpx.Client(timeout=300) as c:
        for b in reqs:
            r = c.post(base_url + path, json=b)
            if r.status_code != 200:
                raise RuntimeError(f"{path} -> HTTP {r.status_code}: {r.text[:300]}")
            j = r.json()
            if "results" in j:
                out.append([x["relevance_score"] for x in sorted(j["results"], key=lambda x: x["index"])])
            else:
                out += _vectors(j)
    return out


def agreement(kind: str, got: list, want: list) -> float:
    """Min cosine (embeddings) or 1 - max |score difference| (rerank) against the offline API."""
    import numpy as np

    if kind == "rerank-1x20":
        return 1.0 - max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w))
    if len(got) != len(want):
        return float("nan")
    return min(float(np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w))) for g, w in zip(got, want))


# ---------------------------------------------------------------- CPU per process

def role(p, depth: int) -> str:
    """API server, engine core or worker, from the process's place in the server's tree (a
    forked worker may still carry its parent's title): the root serves HTTP, its children are
    the engine core (and, with --api-server-count > 1, API servers named so), theirs workers."""
    try:
        text = p.name() + " " + " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - a process gone between listing and reading
        return "other"
    return role_of(text, depth)


def role_of(text: str, depth: int) -> str:
    """The rule of ``role`` on a process's name and command line (``account.py`` applies it to
    the sampler's files): one rule for both benchmarks."""
    text = text.lower()
    if "resource_tracker" in text:
        return "other"
    if depth == 0 or "apiserver" in text or "api_server" in text:
        return "api_server"
    return "engine_core" if depth == 1 else "worker"


def tree_cpu(pids: list[int], *, root_role: str = "api_server", exclude=()) -> dict[str, float]:
    """CPU seconds (user + system) of each process under ``pids``, summed by role."""
    import psutil

    out: dict[str, float] = {}
    seen = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [(root, 0)] + [(c, _depth(c, root.pid)) for c in root.children(recursive=True)]
        except psutil.Error:
            continue
        for p, r in procs:
            if p.pid in seen or p.pid in exclude:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            name = root_role if r == 0 else role(p, r)
            out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def _depth(p, root_pid: int) -> int:
    """1 for a child of ``root_pid``, 2 for a grandchild, ..."""
    try:
        chain = [q.pid for q in p.parents()]
    except Exception:  # noqa: BLE001 - gone meanwhile
        return 1
    return chain.index(root_pid) + 1 if root_pid in chain else 1


def delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


@contextlib.contextmanager
def paused(pids: list[int]):
    """SIGSTOP these processes and their descendants for the block (see run.paused)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root] + root.children(recursive=True)
        except psutil.Error:
            pass
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGCONT)
        time.sleep(0.2)


# ---------------------------------------------------------------- one measurement

def measure_server(srv, path: str, reqs: list[dict], per_request: int, concurrency: int) -> dict:
    import serving

    before = tree_cpu([srv.proc.pid])
    lv = serving.level(serving.http_sender(srv.base_url if path.startswith("/emb") else srv.url, path,
                                           reqs, per_request), n_requests=len(reqs), concurrency=concurrency)
    cpu = delta(tree_cpu([srv.proc.pid]), before)
    if lv["failed"]:
        raise RuntimeError(f"{path}: {lv['failed']} failed: {lv['failures'][:2]}")
    items = len(reqs) * per_request
    return {"items": items, "seconds": lv["seconds"], "items_per_s": items / lv["seconds"],
            "p50_ms": lv["p50_ms"], "prompt_tokens_per_item": lv["tokens_per_s"] * lv["seconds"] / items,
            "cpu_ms_per_item": {k: v * 1000 / items for k, v in cpu.items()}}


def measure_offline(engine, kind: str, items: list, servers: list[int], requests_per_call: int | None) -> dict:
    """``process()`` on ``items``, ``requests_per_call`` requests' worth per call (None: all in
    one call). A rerank set is one call whatever the level (one query per call)."""
    own = os.getpid()
    per = KINDS[kind]["per_request"]
    step = len(items) if requests_per_call is None else per * requests_per_call
    before = tree_cpu([own], root_role="offline_driver", exclude=set(servers_tree(servers)))
    t0 = time.perf_counter()
    if kind == "rerank-1x20":
        for x in items:
            engine.process(x)
    else:
        for k in range(0, len(items), step):
            engine.process(items[k:k + step])
    seconds = time.perf_counter() - t0
    cpu = delta(tree_cpu([own], root_role="offline_driver", exclude=set(servers_tree(servers))), before)
    n = len(items) * (per if kind == "rerank-1x20" else 1)
    return {"items": n, "seconds": seconds, "items_per_s": n / seconds,
            "cpu_ms_per_item": {k: v * 1000 / n for k, v in cpu.items()}}


def servers_tree(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.Error:
            pass
    return out


def offline_children(servers: list[int]) -> list[int]:
    """This process's children that are not a server's (the offline engine's core)."""
    import psutil

    skip = set(servers_tree(servers))
    return [c.pid for c in psutil.Process().children() if c.pid not in skip]


# ---------------------------------------------------------------- the run

def summarise(values: list[float]) -> dict:
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "n": len(v)}


def ratio_summary(ratios: list[float], draws: int = 2000, seed: int = 0) -> dict:
    """Median, range and a 95 % percentile-bootstrap interval of the median of paired ratios
    (fixed seed: the same rounds give the same interval). Pairing by round cancels the drift of
    this shared machine, which is slower than a round and larger than the gaps measured."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return dict(summarise(ratios), ci95=[medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]],
                rounds=ratios)


def run(out: Path, *, rounds: int, kinds: list[str], logs: Path) -> dict:
    from qwen3vl_vllm.ops.launcher import ServerProcess, free_port
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint
    from run import SIZING, plain_args, served_model, server_env

    tmp = out / "media"
    cache = ROOT / ".cache" / "checkpoints"
    res = {"rounds": rounds, "levels": list(LEVELS), "kinds": {}, "parity": {}}
    for model_kind in ("embedding", "reranker"):
        group = [k for k in kinds if KINDS[k]["model"] == model_kind]
        if not group:
            continue
        ckpt = str(ensure_checkpoint(cache, kind=model_kind, size="tiny"))
        port = free_port()
        plain_env = dict(server_env(), VLLM_PLUGINS="__none__")
        with ServerProcess(ckpt, extra_args=SIZING, env=server_env(),
                           log_path=logs / f"frontend-plugin-{model_kind}.log") as plug, \
                ServerProcess(ckpt, port=port, env=plain_env, log_path=logs / f"frontend-plain-{model_kind}.log",
                              full_args=plain_args(model_kind, ckpt, port)) as plain:
            servers = [plug.proc.pid, plain.proc.pid]
            engine = _offline_engine(model_kind, ckpt)
            try:
                off_pids = offline_children(servers)
                sides = {"plugin": plug, "plain": plain}
                models = {s: served_model(v.base_url) for s, v in sides.items()}
                for kind in group:
                    res["kinds"][kind] = _kind(kind, sides, models, engine, servers, off_pids, rounds, tmp,
                                               res["parity"])
            finally:
                _close(engine)
    return res


def _offline_engine(model_kind: str, ckpt: str):
    from qwen3vl_vllm import Qwen3VLEmbedder, Qwen3VLReranker

    cls = Qwen3VLEmbedder if model_kind == "embedding" else Qwen3VLReranker
    return cls(ckpt, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.25, max_num_seqs=64,
               kv_cache_memory_bytes=2 ** 30)


def _close(engine) -> None:
    with contextlib.suppress(Exception):
        engine.close()


def _kind(kind, sides, models, engine, servers, off_pids, rounds, tmp, parity) -> dict:
    spec = KINDS[kind]
    path = "/v1/rerank" if kind == "rerank-1x20" else "/embeddings"
    seed0 = 10 + 1000 * list(KINDS).index(kind)
    # parity first: a few items through every side; the plain column exists only where it agrees
    probe = make_items(kind, 2 if spec["per_request"] > 1 else 4, seed0, tmp)
    want = _offline_answers(engine, kind, probe)
    agree = {}
    for s, srv in sides.items():
        base = srv.base_url if path == "/embeddings" else srv.url
        try:
            agree[s] = agreement(kind, answers(base, path, bodies(kind, s, probe, models[s], srv.base_url)), want)
        except RuntimeError as e:
            agree[s] = f"refused: {e}"[:300]
    parity[kind] = agree
    ok = {s: isinstance(a, float) and a >= PARITY for s, a in agree.items()}
    if not ok["plugin"]:
        raise RuntimeError(f"{kind}: the plugin server disagrees with the offline API: {agree['plugin']}")
    measured = [s for s in ("plugin", "plain") if ok[s]] + ["offline"]
    print(f"[frontend] {kind}: parity {agree}; measuring {measured}", flush=True)
    levels = {s: (*LEVELS, "batch") if s == "offline" else LEVELS for s in measured}
    rows = {s: {c: [] for c in levels[s]} for s in measured}
    for r in range(rounds):
        order = measured[r % len(measured):] + measured[:r % len(measured)]
        sets = {c: make_items(kind, spec["requests"][i], seed0 + 1 + 10 * r + i, tmp) for i, c in enumerate(LEVELS)}
        warm = make_items(kind, 2, seed0 + 7 + 10 * r, tmp)
        for s in order:
            if s == "offline":
                others = servers
                with paused(others):
                    _offline_answers(engine, kind, warm)
                    # no concurrency offline: c requests' worth per call (the batches a server
                    # at c can form), then the c=8 set in one call (the batched yardstick)
                    for c in LEVELS:
                        rows[s][c].append(measure_offline(engine, kind, sets[c], servers, c))
                    rows[s]["batch"].append(measure_offline(engine, kind, sets[LEVELS[-1]], servers, None))
                continue
            srv = sides[s]
            others = [p for p in servers if p != srv.proc.pid] + off_pids
            with paused(others):
                answers(srv.base_url if path == "/embeddings" else srv.url, path,
                        bodies(kind, s, warm, models[s], srv.base_url))
                for c in LEVELS:
                    rows[s][c].append(measure_server(srv, path, bodies(kind, s, sets[c], models[s], srv.base_url),
                                                     spec["per_request"], c))
        line = ", ".join(f"{s} c={c} {rows[s][c][-1]['items_per_s']:.1f}/s "
                         f"{sum(rows[s][c][-1]['cpu_ms_per_item'].values()):.2f} ms" for s in measured for c in levels[s])
        print(f"[frontend] {kind} round {r}: {line}", flush=True)
    return {"per_request": spec["per_request"], "requests": dict(zip(map(str, LEVELS), spec["requests"])),
            "sides": {s: {str(c): _level_summary(rows[s][c]) for c in levels[s]} for s in measured},
            "rounds": {s: {str(c): rows[s][c] for c in levels[s]} for s in measured}}


def _offline_answers(engine, kind, items) -> list:
    import numpy as np

    if kind == "rerank-1x20":
        return [list(map(float, engine.process(x))) for x in items]
    return [np.asarray(v, dtype="f4") for v in engine.process(items)]


def _level_summary(rows: list[dict]) -> dict:
    roles = sorted({k for r in rows for k in r["cpu_ms_per_item"]})
    out = {"items_per_s": summarise([r["items_per_s"] for r in rows]),
           "prompt_tokens_per_item": statistics.median([r.get("prompt_tokens_per_item", 0.0) for r in rows]),
           "cpu_ms_per_item": summarise([sum(r["cpu_ms_per_item"].values()) for r in rows]),
           "by_process": {k: summarise([r["cpu_ms_per_item"].get(k, 0.0) for r in rows]) for k in roles}}
    return out


def derived(res: dict) -> dict:
    """Serving overhead and the issue's targets, per kind (reported, never asserted). The
    overhead at c is against the offline API fed c requests' worth per call (the same batches
    a server at c can form); ``vs_batched`` is against one call over the whole set."""
    out = {}
    for kind, k in res["kinds"].items():
        sides = k["sides"]
        off = {c: v["cpu_ms_per_item"]["median"] for c, v in sides["offline"].items()}
        row = {f"offline_{c}_cpu_ms": v for c, v in off.items()}
        for s in ("plugin", "plain"):
            for c in map(str, LEVELS):
                if s not in sides:
                    continue
                cpu = sides[s][c]["cpu_ms_per_item"]["median"]
                row[f"{s}_c{c}_cpu_ms"] = cpu
                row[f"{s}_c{c}_overhead_ms"] = cpu - off[c]
                row[f"{s}_c{c}_vs_offline"] = cpu / off[c]
                row[f"{s}_c{c}_vs_batched"] = cpu / off["batch"]
                if s == "plugin" and "plain" in sides:
                    row[f"plugin_vs_plain_items_c{c}"] = (sides["plugin"][c]["items_per_s"]["median"]
                                                          / sides["plain"][c]["items_per_s"]["median"])
                    row[f"plugin_vs_plain_cpu_c{c}"] = cpu / sides["plain"][c]["cpu_ms_per_item"]["median"]
                    got = k.get("rounds", {})
                    if "plugin" in got and "plain" in got:  # the two sides ran in the same round
                        row[f"plugin_vs_plain_items_c{c}_paired"] = ratio_summary(
                            [a["items_per_s"] / b["items_per_s"] for a, b in zip(got["plugin"][c], got["plain"][c])])
        out[kind] = row
    return out


def markdown(res: dict) -> str:
    lines = ["| item | side | c | items/s (median, range) | CPU ms/item (median, range) | API server "
             "(offline: its process) | engine core | worker | vs offline at c | vs offline batched |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in res["kinds"].items():
        off = {c: v["cpu_ms_per_item"]["median"] for c, v in k["sides"]["offline"].items()}
        for s, levels in k["sides"].items():
            for c, v in levels.items():
                bp = v["by_process"]

                def g(*names):
                    vals = [bp[n]["median"] for n in names if n in bp]
                    return f"{sum(vals):.2f}" if vals else "–"
                ips, cpu = v["items_per_s"], v["cpu_ms_per_item"]
                same = "1.00×" if s == "offline" else f"{cpu['median'] / off[c]:.2f}×"
                label = {"batch": "all in one call"}.get(c, f"{c}/call" if s == "offline" else c)
                lines.append(
                    f"| {kind} | {s} | {label} | {ips['median']:.1f} ({ips['min']:.1f}–{ips['max']:.1f}) | "
                    f"{cpu['median']:.2f} ({cpu['min']:.2f}–{cpu['max']:.2f}) | {g('api_server', 'offline_driver')} | "
                    f"{g('engine_core')} | {g('worker')} | {same} | {cpu['median'] / off['batch']:.2f}× |")
    paired = [(kind, c, row[f"plugin_vs_plain_items_c{c}_paired"]) for kind, row in derived(res).items()
              for c in map(str, LEVELS) if f"plugin_vs_plain_items_c{c}_paired" in row]
    if paired:
        lines += ["", "| item | c | plugin / plain items/s, paired by round: median (95 % interval; range) | "
                      "rounds above 1 |", "|---|---|---|---|"]
        lines += [f"| {kind} | {c} | {p['median']:.3f} ({p['ci95'][0]:.3f}–{p['ci95'][1]:.3f}; "
                  f"{p['min']:.3f}–{p['max']:.3f}) | {sum(r > 1 for r in p['rounds'])} of {p['n']} |"
                  for kind, c, p in paired]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import numpy as np

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, parts = [], {"api_server": [], "engine_core": [], "other": []}
    for kind, k in res["kinds"].items():
        for s, levels in k["sides"].items():
            bp = levels["batch" if s == "offline" else "8"]["by_process"]
            labels.append(f"{kind} {s}")
            parts["api_server"].append(bp.get("api_server", bp.get("offline_driver", {"median": 0}))["median"])
            parts["engine_core"].append(bp.get("engine_core", {"median": 0})["median"])
            parts["other"].append(sum(bp[n]["median"] for n in ("worker", "other") if n in bp))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.5))
    left = np.zeros(len(labels))
    for name, vals in parts.items():
        ax.barh(labels, vals, left=left, label=name.replace("_", " ") + (" / offline driver" if name == "api_server" else ""))
        left += np.asarray(vals)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per item (c = 8; offline: the set in one call), log scale")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out: Path, rounds: int, kinds: list[str] | None = None) -> int:
    import datetime

    from run import machine, versions

    out.mkdir(parents=True, exist_ok=True)
    kinds = kinds or list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
    t0 = time.monotonic()
    res = {"mode": "frontend", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions()}
    res.update(run(out, rounds=rounds, kinds=kinds, logs=out / "logs"))
    res["derived"] = derived(res)
    res["seconds"] = time.monotonic() - t0
    (out / "frontend.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "frontend.md").write_text(md + "\n")
    plot(res, out / "frontend.png")
    print(md)
    print(f"[frontend] wrote {out}/frontend.json, frontend.md, frontend.png in {res['seconds']:.0f}s")
    return 0
