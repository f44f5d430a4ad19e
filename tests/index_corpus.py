"""Corpora for the index job's tests, generated from a seed: a table (JSONL, and the same rows
as CSV and Parquet) and a folder, with the features real corpora have (EXIF photos, palette
and RGBA PNGs, animated GIFs, WebP, a PNG named .dat, captions, videos, frame lists) and the
rows that go wrong in them (missing files, truncated images, duplicate ids, unknown columns,
over-long texts, broken JSON lines, unrecognised files)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from cases import exif_photo, long_text, noise_image, truncated_png, write_mp4

WORDS = ("harbour lantern orchard violet copper meadow glacier velvet signal canyon ember "
         "tide marble thistle falcon quarry saffron mosaic beacon willow").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _images(root: Path, rng: np.random.RandomState) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    sizes = [(96, 64), (40, 300), (257, 129), (33, 33), (180, 120)]
    for k, (w, h) in enumerate(sizes):
        p = root / f"photo{k}.jpg"
        noise_image(w, h, 100 + k).save(p, "JPEG", quality=80 + k)
        out[f"photo{k}"] = p
    out["exif"] = exif_photo(root / "exif.jpg", orientation=6, w=120, h=80)
    pal = noise_image(70, 50, 7).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(root / "palette.png")
    out["palette"] = root / "palette.png"
    rgba = np.array(noise_image(64, 48, 8).convert("RGBA"))
    rgba[..., 3] = rng.randint(0, 256, rgba.shape[:2])
    Image.fromarray(rgba).save(root / "alpha.png")
    out["alpha"] = root / "alpha.png"
    frames = [noise_image(50, 40, 20 + i).convert("P") for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    out["anim"] = root / "anim.gif"
    noise_image(60, 90, 9).save(root / "pic.webp", "WEBP", quality=70)
    out["webp"] = root / "pic.webp"
    return out


def table_corpus(root: Path, seed: int = 3, n_texts: int = 24, n_photos: int = 0) -> dict:
    """``root/corpus.jsonl`` (media by relative path) and what a test needs to know of it:
    ``rows`` (as written, None for the broken line) and ``good`` (the ids that must get a
    vector; the tests name the others' messages)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    imgs = _images(root / "media", np.random.RandomState(seed))
    write_mp4(root / "media" / "clip.mp4", n=8, w=64, h=48, fps=4)
    for i in range(4):
        noise_image(48, 40, 300 + i).save(root / "media" / f"frame{i}.png")
    (root / "media" / "truncated.png").write_bytes(truncated_png())
    rows: list[dict | None] = []
    for i in range(n_texts):
        rows.append({"id": f"text-{i:03d}", "text": _sentence(rng, rng.randint(3, 30))})
    for name, p in imgs.items():
        rows.append({"id": f"img-{name}", "image": f"media/{p.name}"})
    rows.append({"id": "img-captioned", "image": "media/photo1.jpg", "text": "a captioned photo"})
    rows.append({"id": "img-instructed", "image": "media/photo2.jpg",
                 "instruction": "Represent this photo for retrieval"})
    rows.append({"id": "video-file", "video": "media/clip.mp4", "fps": 2.0, "max_frames": 4})
    rows.append({"id": "video-frames", "video": [f"media/frame{i}.png" for i in range(4)]})
    rows.append({"id": 42, "text": "a numeric id"})
    for i in range(n_photos):  # more work per chunk, for jobs that must still run when killed
        w, h = 64 + 8 * (i % 9), 48 + 16 * (i % 5)
        noise_image(w, h, 1000 + i).save(root / "media" / f"many{i}.jpg", "JPEG", quality=85)
        rows.append({"id": f"many-{i:03d}", "image": f"media/many{i}.jpg"})
    bad = {"missing-file": ("image", "media/nope.png"), "truncated-image": ("image", "media/truncated.png"),
           "too-long": ("text", long_text(2500))}
    for rid, (key, value) in bad.items():
        rows.append({"id": rid, key: value})
    rows.append({"id": "text-001", "text": "a second row with an earlier id"})
    rows.append({"id": "typo-column", "imge": "media/photo0.jpg"})
    rows.append(None)  # a broken JSON line
    with open(root / "corpus.jsonl", "w") as f:
        for r in rows:
            f.write("{broken json\n" if r is None else json.dumps(r) + "\n")
    good: list[str] = []  # first rows of their id, readable, embeddable
    for r in rows:
        if r is not None and str(r["id"]) not in bad and "imge" not in r and str(r["id"]) not in good:
            good.append(str(r["id"]))
    return {"path": root / "corpus.jsonl", "rows": rows, "good": good, "n_rows": len(rows)}


def folder_corpus(root: Path, seed: int = 5) -> dict:
    """A folder as people keep one: nested, captions beside photos, a PNG saved as .dat, a
    video with a caption, text notes, a hidden file, a file that is none of these."""
    rng = random.Random(seed)
    imgs = _images(root / "photos", np.random.RandomState(seed))
    (root / "photos" / "photo0.txt").write_text("a caption for photo zero\n")
    (root / "photos" / "exif.txt").write_text("sideways phone photo")
    (root / "notes").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / "notes" / f"note{i}.txt").write_text(_sentence(rng, 12))
    (root / "clips").mkdir(exist_ok=True)
    write_mp4(root / "clips" / "walk.mp4", n=8, w=64, h=48, fps=4)
    (root / "clips" / "walk.txt").write_text("a short walk")
    noise_image(40, 40, 77).save(root / "photos" / "renamed.dat", "PNG")
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    (root / "misc.bin").write_bytes(bytes(range(256)) * 4)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".cache").mkdir(exist_ok=True)
    (root / ".cache" / "x.txt").write_text("hidden")
    return {"path": root, "images": imgs,
            "captioned": {"photos/photo0.jpg": "a caption for photo zero",
                          "photos/exif.jpg": "sideways phone photo",
                          "clips/walk.mp4": "a short walk"},
            "unrecognised": "misc.bin", "broken": "photos/broken.jpg", "renamed": "photos/renamed.dat",
            "hidden": [".DS_Store", ".cache/"]}
