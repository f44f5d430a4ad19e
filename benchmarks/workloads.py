"""Benchmark inputs generated from a seed: texts, images of varied sizes (below min_pixels to
above max_pixels), screenshot-like pages of rendered text, videos (frames and mp4), mixed
batches and rerank sets. Described in workloads.yaml and selected by name."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
WORDS = ("retrieval embedding vector image video screenshot table chart invoice receipt page "
         "query document relevant model cat dog beach sunset city river mountain street market "
         "report summary quarterly revenue growth figure caption section paragraph").split()


def spec(name: str) -> dict:
    data = yaml.safe_load((HERE / "workloads.yaml").read_text())
    if name not in data["workloads"]:
        raise SystemExit(f"unknown workload {name!r}; known: {', '.join(data['workloads'])}")
    return dict(data["workloads"][name], seed=data.get("seed", 0), name=name)


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."


def _image(rng: random.Random, w: int, h: int) -> Image.Image:
    arr = np.random.RandomState(rng.randrange(1 << 30)).randint(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)


def _screenshot(rng: random.Random, w: int, h: int) -> Image.Image:
    page = Image.new("RGB", (w, h), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    y = 20
    while y < h - 20:
        if rng.random() < 0.15:
            draw.rectangle((30, y, w - 30, y + 60), outline=(40, 40, 40))
            y += 70
            continue
        draw.text((30, y), _text(rng, 6, 18), fill=(10, 10, 10))
        y += 18
    return page


def _frames(rng: random.Random, n: int, w: int = 160, h: int = 120) -> list[Image.Image]:
    base = _image(rng, w, h)
    out = []
    for t in range(n):
        f = base.copy()
        ImageDraw.Draw(f).ellipse((10 + 10 * t, 30, 40 + 10 * t, 60), fill=(240, 60, 40))
        out.append(f)
    return out


def _mp4(rng: random.Random, n: int, path: Path) -> str:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for f in _frames(rng, n):
            for p in s.encode(__import__("av").VideoFrame.from_image(f)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def build(name: str, tmp: Path, variant: int = 0) -> tuple[str, object]:
    """-> (kind, inputs): a list of input dicts (embedding) or one reranker input dict.

    ``variant`` draws a different set of the same shape: timed runs use sets the engine has
    never seen, so vLLM's prefix and multimodal caches cannot answer from a previous run.
    """
    sp = spec(name)
    rng = random.Random(f"{sp['seed']}-{name}" + (f"-v{variant}" if variant else ""))
    kind, typ, n = sp["kind"], sp["type"], sp.get("items", 0)
    if typ == "text":
        lo, hi = sp["words"]
        return kind, [{"text": _text(rng, lo, hi)} for _ in range(n)]
    if typ == "image":
        sizes = sp["sizes"]
        return kind, [{"image": _image(rng, *sizes[i % len(sizes)])} for i in range(n)]
    if typ == "screenshot":
        return kind, [{"image": _screenshot(rng, *sp["size"])} for _ in range(n)]
    if typ == "video":
        return kind, [{"video": _frames(rng, sp["frames"])} for _ in range(n)]
    if typ == "mp4":
        return kind, [{"video": _mp4(rng, sp["frames"], tmp / f"{name}-v{variant}-{i}.mp4")}
                      for i in range(n)]
    if typ == "mixed":
        pools = [build(p, tmp, variant)[1] for p in sp["parts"]]
        out = []
        for i in range(n):
            pool = pools[i % len(pools)]
            item = dict(pool[(i // len(pools)) % len(pool)])
            if i % 3 == 0 and "image" in item:
                item["text"] = _text(rng, 4, 12)
            out.append(item)
        return kind, out
    if typ == "rerank":
        pools = [build(p, tmp, variant)[1] for p in sp["parts"]]
        docs = [pools[i % len(pools)][i // len(pools) % len(pools[i % len(pools)])]
                for i in range(sp["documents"])]
        query = ({"image": _image(rng, 640, 480), "text": _text(rng, 4, 8)} if sp.get("query") == "image"
                 else {"text": _text(rng, 6, 12)})
        return kind, {"query": query, "documents": docs}
    raise SystemExit(f"workload {name}: unknown type {typ!r}")


def count_images(kind: str, inputs) -> int:
    items = inputs["documents"] + [inputs["query"]] if kind == "reranker" else inputs
    n = 0
    for it in items:
        img = it.get("image")
        n += len(img) if isinstance(img, list) else (1 if img is not None else 0)
    return n
