"""Deterministic test inputs, generated locally (shared by tests and the offline worker)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    arr = (rng.rand(h, w, 3) * 255).astype("uint8")
    img = Image.fromarray(arr)
    # smooth structure on top of noise so resizes matter but are not pure noise
    return img.convert(mode) if mode != "RGB" else img


def frames(n: int, w: int = 80, h: int = 64, seed: int = 10) -> list[Image.Image]:
    return [noise_image(w, h, seed + i) for i in range(n)]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def write_mp4(path: Path, n: int = 12, w: int = 96, h: int = 64, fps: int = 4) -> Path:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            arr = np.zeros((h, w, 3), dtype=np.uint8)
            arr[:, :, 0] = (i * 20) % 255
            arr[8:40, (i * 6) % (w - 20):(i * 6) % (w - 20) + 20, 1] = 220
            arr[:, :, 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def parity_cases(tmp: Path) -> dict[str, dict]:
    """Case name -> upstream input dict (files written under ``tmp``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    img = noise_image(150, 100, 1)
    path = tmp / "img.png"
    img.save(path)
    mp4 = write_mp4(tmp / "clip.mp4")
    return {
        "text": {"text": "A woman playing with her dog on a beach at sunset."},
        "text+instruction(no punct)": {"text": "a red car", "instruction": "Retrieve images of cars"},
        "text+instruction(punct)": {"text": "a red car", "instruction": "Retrieve images of cars?"},
        "image(PIL)": {"image": img},
        "image(path)": {"image": str(path)},
        "image(data URL)": {"image": data_url(img)},
        "text+image": {"text": "a noisy picture", "image": img},
        "two images": {"image": [img, noise_image(64, 96, 2)]},
        "list of texts": {"text": ["first part", "second part"]},
        "video(frames)": {"video": frames(5)},
        "video(mp4)": {"video": str(mp4)},
        "empty(NULL)": {},
        "image > max_pixels": {"image": noise_image(1500, 1400, 3)},
        "image < min_pixels": {"image": noise_image(20, 30, 4)},
    }


def mixed_batch(tmp: Path, n: int = 32) -> list[dict]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append({"text": f"item number {i} about cats"})
        elif kind == 1:
            out.append({"image": noise_image(40 + 8 * i, 48, 100 + i)})
        elif kind == 2:
            out.append({"text": f"picture {i}", "image": noise_image(64, 40 + 4 * i, 200 + i)})
        else:
            out.append({"text": f"short {i}", "instruction": "Find related notes"})
    return out


def _long_text(n_words: int = 3300, seed: int = 7) -> str:
    """Varied words (not one phrase repeated), so where the cut falls changes the score."""
    import random

    words = ("cat mat dog sun rain tree river stone cloud bird green quick slow paper market "
             "window light music train house field glass night story water").split()
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n_words))


LONG_TEXT = _long_text()  # ~12,300 tokens (tiny tokenizer): longer than the reranker's 10,240


def rerank_cases(tmp: Path) -> dict[str, dict]:
    """Case name -> upstream reranker input dict."""
    tmp.mkdir(parents=True, exist_ok=True)
    img = noise_image(150, 100, 1)
    mp4 = tmp / "clip.mp4"
    if not mp4.exists():
        write_mp4(mp4)
    q = {"text": "a cat sitting on a mat"}
    return {
        "text->text": {"query": q, "documents": [{"text": "a cat"}, {"text": "the stock market"}]},
        "text->image": {"query": q, "documents": [{"image": img}]},
        "image->text": {"query": {"image": img}, "documents": [{"text": "a noisy picture"}]},
        "text->text+image": {"query": q, "documents": [{"text": "a noisy picture", "image": img}]},
        "text->video(frames)": {"query": q, "documents": [{"video": frames(5)}]},
        "text->video(mp4)": {"query": q, "documents": [{"video": str(mp4)}]},
        "video->text": {"query": {"video": frames(4, seed=40)}, "documents": [{"text": "moving dots"}]},
        "custom instruction": {"query": q, "documents": [{"text": "a cat"}],
                               "instruction": "Find documents about pets"},
        "no instruction": {"query": q, "documents": [{"text": "a cat"}], "instruction": None},
        "empty document(NULL)": {"query": q, "documents": [{}]},
        "over max_length": {"query": q, "documents": [{"text": LONG_TEXT}]},
        "over max_length+image": {"query": q, "documents": [{"image": img, "text": LONG_TEXT}]},
    }


def twenty_documents() -> dict:
    docs = []
    for i in range(20):
        if i % 3 == 0:
            docs.append({"text": f"document {i} about cats and mats"})
        elif i % 3 == 1:
            docs.append({"image": noise_image(48 + 4 * i, 64, 300 + i)})
        else:
            docs.append({"text": f"caption {i}", "image": noise_image(64, 40 + 2 * i, 400 + i)})
    return {"query": {"text": "a cat sitting on a mat"}, "documents": docs}


# ---------------------------------------------------------------- bad inputs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` (1-bit grey)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * max(1, (width + 7) // 8)
    idat = zlib.compress(row * min(height, 4), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def truncated_png() -> bytes:
    return png_bytes(noise_image(200, 200, 3))[:400]


def corrupt_mp4() -> bytes:
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x17" * 300


def zero_frame_mp4(path: Path) -> bytes:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # header and a video track, then no frames at all
    return path.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- the parity matrix


def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def matrix_images(tmp: Path) -> dict[str, str]:
    """Image files of every mode and shape the matrix covers (the same bytes on every path)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(77)
    rgba = np.array(noise_image(150, 100, 31).convert("RGBA"))
    rgba[..., 3] = rng.randint(0, 256, rgba.shape[:2])
    rgba_img = Image.fromarray(rgba)
    pal = noise_image(150, 100, 32).convert("P")
    i16 = Image.fromarray((rng.rand(90, 120) * 300).astype("uint16"))
    return {
        "RGB": _save(noise_image(150, 100, 30), tmp / "rgb.png"),
        "RGBA": _save(rgba_img, tmp / "rgba.png"),
        "LA": _save(rgba_img.convert("LA"), tmp / "la.png"),
        "P+transparency": _save(pal, tmp / "p_trans.png", transparency=5),
        "L": _save(noise_image(150, 100, 33).convert("L"), tmp / "l.png"),
        "1-bit": _save(noise_image(150, 100, 34).convert("1"), tmp / "bit1.png"),
        "CMYK JPEG": _save(noise_image(150, 100, 35).convert("CMYK"), tmp / "cmyk.jpg", quality=95),
        "16-bit PNG": _save(i16, tmp / "i16.png"),
        "20x20": _save(noise_image(20, 20, 36), tmp / "s20.png"),
        "1200x40": _save(noise_image(1200, 40, 37), tmp / "wide.png"),
        "2600x1900": _save(noise_image(2600, 1900, 38), tmp / "big.png"),
    }


def matrix_cases(tmp: Path) -> dict[str, dict]:
    """Case name -> embedding input dict for the parity matrix (every path, one bound)."""
    imgs = matrix_images(tmp / "img")
    mp4 = tmp / "matrix.mp4"
    if not mp4.exists():
        write_mp4(mp4, n=20, w=100, h=70, fps=5)
    cases: dict[str, dict] = {
        "text": {"text": "A woman playing with her dog on a beach at sunset."},
        "instruction ASCII": {"text": "a red car", "instruction": "Retrieve images of cars"},
        "instruction full-width": {"text": "红色的车", "instruction": "查找相关的图片。"},
        "instruction digit": {"text": "a red car", "instruction": "Return the top 10"},
        "instruction whitespace": {"text": "a red car", "instruction": "  Find cars  \n"},
        '"" text': {"text": ""},
        "empty (NULL)": {},
    }
    cases.update({f"image {k}": {"image": v} for k, v in imgs.items()})
    cases["two images"] = {"image": [imgs["RGB"], imgs["20x20"]]}
    for n in (1, 2, 3, 10, 64, 100):
        cases[f"frames x{n}"] = {"video": frames(n, w=64, h=48, seed=500 + n)}
    cases["mp4"] = {"video": str(mp4)}
    cases["mp4 fps=2 max_frames=6"] = {"video": str(mp4), "fps": 2.0, "max_frames": 6}
    cases["text+image+video"] = {"text": "a mix", "image": imgs["LA"], "video": frames(3, seed=700)}
    return cases


def rerank_matrix_cases(tmp: Path) -> dict[str, dict]:
    """Case name -> reranker input dict for the parity matrix."""
    imgs = matrix_images(tmp / "img")
    mp4 = tmp / "matrix.mp4"
    if not mp4.exists():
        write_mp4(mp4, n=20, w=100, h=70, fps=5)
    q = {"text": "a cat sitting on a mat"}
    cases = {
        "text->text": {"query": q, "documents": [{"text": "a cat"}, {"text": "the stock market"}]},
        '"" document': {"query": q, "documents": [{"text": ""}]},
        "empty document (NULL)": {"query": q, "documents": [{}]},
        '"" query': {"query": {"text": ""}, "documents": [{"text": "a cat"}]},
        '"" instruction': {"query": q, "documents": [{"text": "a cat"}], "instruction": ""},
        "custom instruction": {"query": q, "documents": [{"text": "a cat"}],
                               "instruction": "Find documents about pets"},
        "image query": {"query": {"image": imgs["RGBA"]}, "documents": [{"text": "noise"}]},
        "mp4 fps=2 max_frames=6": {"query": q, "documents": [{"video": str(mp4)}],
                                   "fps": 2.0, "max_frames": 6},
        "mp4": {"query": q, "documents": [{"video": str(mp4)}]},
        "text+image+video doc": {"query": q, "documents": [
            {"text": "a mix", "image": imgs["P+transparency"], "video": frames(3, seed=710)}]},
    }
    for k in ("LA", "P+transparency", "CMYK JPEG", "1200x40", "2600x1900"):
        cases[f"image doc {k}"] = {"query": q, "documents": [{"image": imgs[k]}]}
    for n in (1, 3, 10, 100):
        cases[f"frames x{n} doc"] = {"query": q, "documents": [{"video": frames(n, w=64, h=48, seed=800 + n)}]}
    return cases


# Named instructions the test embedding server is started with (QWEN3VL_INSTRUCTIONS)
NAMED_INSTRUCTIONS = {
    "query": "Retrieve images or passages that answer the query",
    "search_document": "Represent this document for retrieval",
}
CLIENT_TEXTS = ["A woman playing with her dog on a beach at sunset.", "the stock market fell today",
                "查找相关的图片", "", "multi\nline text with émoji 🐱"]


def long_video(path: Path, seconds: int, w: int = 640, h: int = 480, fps: int = 30) -> Path:
    """A long, low-bitrate clip made at test time (small file, many frames): a still
    background with a small moving square, mpeg4 with sparse key frames."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 90)], axis=-1).astype(np.uint8)
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 200_000
        stream.codec_context.gop_size = fps * 10
        for i in range(seconds * fps):
            arr = base.copy()
            cx = (i * 4) % (w - 40)
            cy = (i * 2) % (h - 40)
            arr[cy:cy + 40, cx:cx + 40] = (250, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def resolution_change_ts(path: Path, sizes=((64, 48), (256, 192)), n: int = 8, fps: int = 4) -> Path:
    """An MPEG-TS whose picture size changes mid-stream: two clips of different sizes, one after
    the other (TS allows it: the decoder meets a new sequence header). The container header only
    knows the first size."""
    import av

    parts = []
    for k, (w, h) in enumerate(sizes):
        part = path.with_suffix(f".part{k}.ts")
        with av.open(str(part), mode="w", format="mpegts") as container:
            stream = container.add_stream("mpeg2video", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for i in range(n):
                arr = np.full((h, w, 3), (i * 30 + k * 100) % 255, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        parts.append(part.read_bytes())
        part.unlink()
    path.write_bytes(b"".join(parts))
    return path


def exif_photo(path: Path, orientation: int = 6, w: int = 320, h: int = 200, seed: int = 4) -> Path:
    """A photo-like JPEG as phone cameras write it: the pixels stored sideways with an EXIF
    orientation tag (6: rotate 90 degrees clockwise to display). The reference embeds the stored
    pixels; a server that applies the tag sees another image."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1).astype(np.uint8)
    arr[h // 4: h // 2, w // 5: w // 2] = (250, 30, 30)  # something that moves when rotated
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def long_text(n_words: int = 2500, seed: int = 11) -> str:
    """A text longer than the embedding's 8,192 tokens on the tiny tokenizer (~3.7 tokens a
    word: 2,500 words are ~9,300 tokens, 4,500 words ~16,700)."""
    return _long_text(n_words=n_words, seed=seed)


TEXT_LIST_PARTS = ["first part of the document, ", "second part", ""]


def real_world_rerank(photo: Path) -> dict:
    """The reranker input of the real-world test: a phone photo and a text list as documents."""
    return {"query": {"text": "a red square on a gradient"},
            "documents": [{"image": str(photo)}, {"text": list(TEXT_LIST_PARTS)},
                          {"text": "a cat", "image": str(photo)}]}
