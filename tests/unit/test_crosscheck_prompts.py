"""Two readings of the upstream prompt rules must agree: the package's ``inputs`` and the
independent ``reference`` (which imports nothing it checks). A generated corpus of input dicts,
from a fixed seed, goes through both; their conversations must be equal part by part.

A bug in one reading (a stretched frame list, a lost NULL, a wrong instruction rule) shows up
here as a mismatch with the case printed, without a model.
"""

from __future__ import annotations

import ast
import hashlib
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen3vl_vllm.prompts import inputs as I
from qwen3vl_vllm.testing import reference as R

SEED = 20261128
N_EMBED = 320
N_RERANK = 120
MODES = ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "I", "F"]
INSTRUCTIONS = [None, "", "   ", "Retrieve images of cars", "Retrieve images of cars?",
                "Find the answer!", "查找相关的图片", "查找相关的图片。", "猫を探す！", "top 10",
                "  padded instruction \n", "ends with colon:", "quote'", "rank 1-20"]
TEXTS = ["a cat", "", "   ", "multi\nline", "émoji 🐱", "NULL", "<Document>: inside"]


def _image(rng: random.Random, mode: str) -> Image.Image:
    w, h = rng.randint(1, 40), rng.randint(1, 40)
    arr = np.random.RandomState(rng.randint(0, 10**6)).randint(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "P":
        img = img.convert("P")
        img.info["transparency"] = 0
        return img
    return img.convert(mode)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _image_source(rng: random.Random):
    kind = rng.choice(["path", "file", "data", "pil", "bytes", "url"])
    if kind == "path":
        return f"/data/img_{rng.randint(0, 999)}.{rng.choice(['png', 'jpg', 'webp'])}"
    if kind == "file":
        return f"file:///data/pic_{rng.randint(0, 99)}.png"
    if kind == "url":
        return f"https://example.invalid/i/{rng.randint(0, 99)}.jpg?size=large"
    img = _image(rng, rng.choice(MODES))
    if kind == "data":
        import base64

        return "data:image/png;base64," + base64.b64encode(_png_bytes(img)).decode()
    if kind == "bytes":
        return _png_bytes(img)
    return img


def _frames(rng: random.Random) -> list:
    n = rng.choice([1, 2, 3, 5, 10, 31, 63, 64, 65, 99, 100, rng.randint(1, 100)])
    if rng.random() < 0.5:
        return [f"/frames/clip{rng.randint(0, 9)}/f{i:03d}.jpg" for i in range(n)]
    return [_image(rng, "RGB") for _ in range(n)]


def _video(rng: random.Random):
    r = rng.random()
    if r < 0.35:
        return f"/videos/clip_{rng.randint(0, 99)}.{rng.choice(['mp4', 'webm', 'mkv'])}"
    if r < 0.8:
        return _frames(rng)
    return [_frames(rng), _frames(rng)]  # two videos given as frames


def _side(rng: random.Random) -> dict:
    obj: dict = {}
    if rng.random() < 0.6:
        obj["text"] = rng.choice(TEXTS) if rng.random() < 0.7 else rng.sample(TEXTS, rng.randint(0, 3))
    if rng.random() < 0.4:
        obj["image"] = (_image_source(rng) if rng.random() < 0.6
                        else [_image_source(rng) for _ in range(rng.randint(0, 3))])
    if rng.random() < 0.3:
        obj["video"] = _video(rng)
    return obj


def embedding_corpus(seed: int = SEED, n: int = N_EMBED) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        item = _side(rng)
        if rng.random() < 0.6:
            item["instruction"] = rng.choice(INSTRUCTIONS)
        if rng.random() < 0.3:
            item["fps"] = rng.choice([0.5, 1, 2.0, 4])
        if rng.random() < 0.3:
            item["max_frames"] = rng.choice([2, 8, 32, 64, 128])
        out.append(item)
    return out


def rerank_corpus(seed: int = SEED + 1, n: int = N_RERANK) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query = _side(rng) or {"text": rng.choice(TEXTS)}  # an empty query is refused, not compared
        inputs = {"query": query, "documents": [_side(rng) for _ in range(rng.randint(1, 3))]}
        if rng.random() < 0.6:
            inputs["instruction"] = rng.choice(INSTRUCTIONS)
        if rng.random() < 0.3:
            inputs["fps"] = rng.choice([0.5, 2.0])
        if rng.random() < 0.3:
            inputs["max_frames"] = rng.choice([4, 16, 64])
        out.append(inputs)
    return out


def _canon_source(src):
    """One comparable value per media source: paths without ``file://``, pixels by digest."""
    if isinstance(src, str):
        return src[7:] if src.startswith("file://") else src
    if isinstance(src, (bytes, bytearray)):
        src = Image.open(io.BytesIO(bytes(src)))
    img = src
    return ("pixels", img.mode, img.size, hashlib.sha1(img.tobytes()).hexdigest())


def _canon(conv: list[dict]) -> list:
    out = []
    for turn in conv:
        parts = []
        for p in turn["content"]:
            q = dict(p)
            if q["type"] == "image":
                q["image"] = _canon_source(q["image"])
            elif q["type"] == "video":
                v = q["video"]
                q["video"] = ([_canon_source(f) for f in v] if isinstance(v, (list, tuple))
                              else _canon_source(v))
            parts.append(q)
        out.append((turn["role"], parts))
    return out


def _describe(item) -> str:
    def short(v):
        if isinstance(v, list):
            return f"list[{len(v)}]" if len(v) > 4 else [short(x) for x in v]
        if isinstance(v, Image.Image):
            return f"PIL {v.mode} {v.size}"
        if isinstance(v, bytes):
            return f"bytes[{len(v)}]"
        if isinstance(v, str) and len(v) > 60:
            return v[:40] + "..."
        return v
    return repr({k: (short(v) if not isinstance(v, dict) else {a: short(b) for a, b in v.items()})
                 for k, v in item.items()})


def test_corpus_is_broad():
    """The corpus covers what the issue lists (so this test cannot pass on a narrow corpus)."""
    corpus = embedding_corpus()
    assert len(corpus) >= 300
    frame_counts, modes, endings = set(), set(), set()
    for item in corpus:
        videos = item.get("video")
        for v in ([videos] if videos is not None else []):
            for clip in (v if v and isinstance(v[0], list) else [v]) if isinstance(v, list) else []:
                frame_counts.add(len(clip))
        for img in (item.get("image") if isinstance(item.get("image"), list) else [item.get("image")]):
            if isinstance(img, Image.Image):
                modes.add(img.mode)
        if isinstance(item.get("instruction"), str) and item["instruction"].strip():
            endings.add(item["instruction"].strip()[-1])
    assert {1, 2, 3, 10, 64, 100} <= frame_counts, sorted(frame_counts)
    assert {"RGB", "RGBA", "LA", "P", "L", "1", "CMYK", "I;16"} <= modes, modes
    assert {"s", "?", "。", "！", "0"} <= endings, endings
    assert any(item.get("text") == "" for item in corpus)
    assert any(not ({"text", "image", "video"} & set(item)) for item in corpus)


def test_embedding_conversations_agree():
    mismatches = []
    for k, item in enumerate(embedding_corpus()):
        ours = _canon(I.embedding_conversation(item, index=k))
        ref = _canon(R.embedding_conversation(item))
        if ours != ref:
            mismatches.append(f"#{k} {_describe(item)}\n  ours: {str(ours)[:300]}\n  ref:  {str(ref)[:300]}")
    print(f"CROSSCHECK embedding: {N_EMBED} generated inputs, {len(mismatches)} mismatches")
    assert not mismatches, "\n".join(mismatches[:5])


def test_rerank_conversations_agree():
    mismatches, pairs = [], 0
    for k, inputs in enumerate(rerank_corpus()):
        req = I.rerank_request(inputs)
        for d, (doc, raw_doc) in enumerate(zip(req.documents, inputs["documents"], strict=True)):
            pairs += 1
            ours = _canon(I.rerank_conversation(req.instruction, req.query, doc))
            ref = _canon(R.rerank_conversation(inputs.get("instruction"), inputs["query"], raw_doc,
                                               fps=inputs.get("fps"), max_frames=inputs.get("max_frames")))
            if ours != ref:
                mismatches.append(f"#{k}.{d} {_describe(inputs)}\n  ours: {str(ours)[:300]}\n  ref:  {str(ref)[:300]}")
    print(f"CROSSCHECK rerank: {pairs} generated pairs, {len(mismatches)} mismatches")
    assert pairs >= 200 and not mismatches, "\n".join(mismatches[:5])


def test_reference_imports_nothing_it_checks():
    """The reference must be a second reading: no import of the modules it is used to check."""
    tree = ast.parse(Path(R.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add((node.module or "") if node.level == 0 else "." + (node.module or ""))
            if node.level and node.module is None:
                imported.update("." + a.name for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    checked = {"inputs", "media", "client", "rerank_client", "plugin", "offline",
               "media_connector", "video_loader", "score_truncation", "templates"}
    bad = {m for m in imported if m.lstrip(".").split(".")[-1] in checked or m.startswith(".")
           or m.startswith("qwen3vl_vllm")}
    assert not bad, bad


@pytest.mark.parametrize("n", [1, 2, 3, 10, 64])
def test_short_frame_lists_agree_and_are_not_stretched(n):
    frames = [f"/f/{i}.png" for i in range(n)]
    ours = I.embedding_conversation({"video": frames})[1]["content"][0]["video"]
    ref = R.embedding_conversation({"video": frames})[1]["content"][0]["video"]
    assert ours == frames and [f[7:] for f in ref] == frames
