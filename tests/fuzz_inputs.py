"""Inputs for the differential fuzzer, generated from a seed with the features real files carry.

``embedding_cases(seed, n, root)`` / ``rerank_cases(seed, n, root)`` write their media under
``root`` and return ``FuzzCase`` objects: an upstream input dict, the features it exercises
(for the report), and for a bad input the item that is wrong and a fragment of the error.

What is generated (each drawn per case from the seed):

- images: photo-like renders and the real photos that ship inside installed packages
  (scikit-image's ``data`` folder, matplotlib's sample data), a document page and a UI-like
  screenshot drawn with matplotlib; saved as baseline/progressive/CMYK JPEG, RGB/RGBA/LA/L/1-bit,
  16-bit and palette PNG (with tRNS), APNG, animated GIF and WebP, WebP with alpha, TIFF, BMP; with
  EXIF orientations 1-8 and embedded ICC profiles; tiny, large and extreme-aspect sizes;
- videos: mp4 (H.264 with B-frames, MPEG-4), webm (VP8, VP9), mkv, mov, MPEG-TS; rotation side
  data, variable frame rate, an audio track, odd sizes, clips shorter than one sampling step,
  per-item fps/max_frames (0 meaning the default); frame lists of mixed sources and lengths
  (above 64: sampled);
- texts and instructions in many scripts, Unicode normalisation forms, control and bidi
  characters, text lists with empty parts;
- bad inputs: corrupt and truncated files, an aspect ratio above 200, a zero-frame video, a
  frame list with a broken frame, a non-finite fps.

For video features the reference's reader has no opinion on (rotation side data, variable
frame rate), the expected result is the reference's own reading as SPEC describes it: a PyAV
reader following qwen-vl-utils' decord reader (frames by count and average fps, rotation
ignored).

Run at length: ``./launch.sh test tests/integration/test_fuzz.py --fuzz-seed 7 --fuzz-n 2000``.
"""

from __future__ import annotations

import io
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_SEED = 20261201
DEFAULT_N = 200  # inputs in the test suite: embedding + reranker cases together


@dataclass
class FuzzCase:
    name: str
    item: dict                      # an embedding input dict, or a reranker input dict
    features: list[str] = field(default_factory=list)
    bad: str | None = None          # "image" / "video" / "fps": what is wrong (None: a good input)
    fragment: str = ""              # a piece of the error message a bad input must produce
    truncate: bool = False          # longer than max_length: embedded with the reference's cut


# ------------------------------------------------------------------ image content


def _real_photos() -> list[Path]:
    """Real images shipped inside installed packages (no download)."""
    found: list[Path] = []
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        found += sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg") and
                        p.stat().st_size > 20_000)
    except ImportError:
        pass
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
        found += sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    except ImportError:
        pass
    return found


_PHOTOS: list[Path] | None = None


def _photo(rng: random.Random) -> Image.Image:
    global _PHOTOS
    if _PHOTOS is None:
        _PHOTOS = _real_photos()
    if not _PHOTOS:
        return _render(rng, 320, 240)
    with Image.open(rng.choice(_PHOTOS)) as im:
        im.load()
        return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()


def _render(rng: random.Random, w: int, h: int) -> Image.Image:
    """A photo-like synthetic image: gradients, noise and shapes."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.random.default_rng(rng.randrange(2**32))
    base = np.stack([(x * rng.uniform(0.2, 3) + y * rng.uniform(-1, 1)) % 256,
                     (y * rng.uniform(0.2, 3)) % 256,
                     np.full_like(x, rng.uniform(0, 255))], axis=-1)
    base += r.normal(0, rng.uniform(0, 30), base.shape)
    for _ in range(rng.randint(0, 6)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        base[y0:y0 + rng.randint(1, max(2, h // 3)), x0:x0 + rng.randint(1, max(2, w // 3))] = [
            rng.uniform(0, 255) for _ in range(3)]
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


_DOCS: dict[str, Image.Image] = {}


def _document(kind: str) -> Image.Image:
    """A rendered document page or a UI-like screenshot (matplotlib, no display)."""
    if kind in _DOCS:
        return _DOCS[kind]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kind == "page":
        fig = plt.figure(figsize=(8.5, 11), dpi=60)
        fig.text(0.1, 0.92, "Quarterly report: retrieval serving", fontsize=20, weight="bold")
        for i in range(24):
            fig.text(0.1, 0.86 - i * 0.028, f"{i + 1}. Lorem ipsum dolor sit amet, consectetur "
                     f"adipiscing elit, sed do eiusmod tempor {i * 17 % 97} incididunt.", fontsize=9)
        ax = fig.add_axes([0.15, 0.08, 0.7, 0.18])
        ax.bar(range(8), [3, 5, 2, 7, 4, 6, 1, 8])
        ax.set_title("Items per second")
    else:
        fig = plt.figure(figsize=(12.8, 7.2), dpi=50)
        fig.patch.set_facecolor("#f3f3f3")
        ax = fig.add_axes([0, 0.92, 1, 0.08])
        ax.set_facecolor("#2b579a")
        ax.set_xticks([]); ax.set_yticks([])
        ax.text(0.01, 0.35, "qwen3vl-vllm dashboard   File  Edit  View  Help", color="white", fontsize=14)
        for k in range(4):
            b = fig.add_axes([0.03 + k * 0.24, 0.55, 0.2, 0.3])
            b.plot(np.cumsum(np.sin(np.arange(40) * (k + 1) / 7)))
            b.set_title(f"panel {k + 1}", fontsize=10)
        fig.text(0.03, 0.4, "[ Search ]  [ Rerank ]  [ Index ]", fontsize=16)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    _DOCS[kind] = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return _DOCS[kind]


def _content(rng: random.Random) -> tuple[Image.Image, str]:
    pick = rng.random()
    if pick < 0.35:
        return _photo(rng), "real photo"
    if pick < 0.45:
        kind = rng.choice(["page", "screenshot"])
        return _document(kind), f"rendered {kind}"
    w, h = rng.randint(40, 700), rng.randint(40, 700)
    return _render(rng, w, h), "synthetic"


def _sized(rng: random.Random, img: Image.Image) -> tuple[Image.Image, str]:
    pick = rng.random()
    if pick < 0.08:
        w, h = rng.randint(1, 12), rng.randint(1, 12)
        return img.resize((w, h)), f"tiny {w}x{h}"
    if pick < 0.16:
        short, ratio = rng.randint(4, 12), rng.randint(50, 199)
        long = min(short * ratio, 2400)
        w, h = (long, short) if rng.random() < 0.5 else (short, long)
        return img.resize((w, h)), f"extreme aspect {max(w, h) / min(w, h):.0f}:1"
    if pick < 0.22:
        w, h = rng.choice([(2600, 1900), (1900, 2600), (2200, 1400)])
        return img.resize((w, h)), "large"
    if pick < 0.6:
        return img, "as is"
    scale = rng.uniform(0.3, 1.5)
    return img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale)))), "rescaled"


def _icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def save_image(rng: random.Random, img: Image.Image, path_stem: Path) -> tuple[Path, list[str]]:
    """Save with a random format, mode, EXIF orientation and ICC profile; returns the path and
    the features used."""
    feats = []
    fmt = rng.choice(["jpeg", "jpeg", "jpeg-progressive", "jpeg-cmyk", "png", "png", "png-rgba",
                      "png-la", "png-l", "png-1", "png-16", "png-palette-trns", "apng", "gif",
                      "gif-animated", "webp", "webp-alpha", "webp-animated", "tiff", "bmp"])
    feats.append(fmt)
    kw: dict[str, Any] = {}
    orientation = rng.choice([None, None, 1, 2, 3, 4, 5, 6, 7, 8])
    exif_ok = fmt.startswith(("jpeg", "png", "webp", "tiff"))
    if orientation is not None and exif_ok:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
        feats.append(f"EXIF orientation {orientation}")
    if rng.random() < 0.25 and fmt.startswith(("jpeg", "png", "webp", "tiff")) and fmt != "jpeg-cmyk":
        kw["icc_profile"] = _icc()
        feats.append("ICC profile")
    rgb = img.convert("RGB")
    if fmt in ("apng", "gif-animated", "webp-animated") and max(rgb.size) > 400:
        rgb.thumbnail((400, 400))  # animated files: the first frame is what counts; keep them quick
    if fmt == "jpeg":
        path = path_stem.with_suffix(".jpg")
        rgb.save(path, "JPEG", quality=rng.randint(40, 98), subsampling=rng.choice([0, 1, 2]), **kw)
    elif fmt == "jpeg-progressive":
        path = path_stem.with_suffix(".jpg")
        rgb.save(path, "JPEG", quality=85, progressive=True, optimize=True, **kw)
    elif fmt == "jpeg-cmyk":
        path = path_stem.with_suffix(".jpg")
        rgb.convert("CMYK").save(path, "JPEG", quality=90, **kw)
    elif fmt.startswith("png") and fmt != "png-palette-trns":
        path = path_stem.with_suffix(".png")
        mode = {"png": "RGB", "png-rgba": "RGBA", "png-la": "LA", "png-l": "L", "png-1": "1",
                "png-16": "I;16"}[fmt]
        if mode == "RGBA":
            out = rgb.copy()
            alpha = Image.fromarray(np.random.default_rng(rng.randrange(2**32)).integers(
                0, 256, (rgb.height, rgb.width), dtype=np.uint8))
            out.putalpha(alpha)
        elif mode == "LA":
            out = rgb.convert("LA")
        elif mode == "I;16":
            out = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
        else:
            out = rgb.convert(mode)
        out.save(path, "PNG", compress_level=rng.choice([0, 1, 3, 6]), **kw)
    elif fmt == "png-palette-trns":
        path = path_stem.with_suffix(".png")
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=rng.choice([16, 64, 256])).save(
            path, "PNG", transparency=rng.randrange(16), **kw)
    elif fmt == "apng":
        path = path_stem.with_suffix(".png")
        frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.rotate(180)]
        frames[0].save(path, "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0,
                       compress_level=1)
    elif fmt.startswith("gif"):
        path = path_stem.with_suffix(".gif")
        if fmt == "gif-animated":
            frames = [rgb.convert("P"), rgb.rotate(90, expand=False).convert("P")]
            frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
        else:
            rgb.convert("P").save(path, "GIF")
    elif fmt.startswith("webp"):
        path = path_stem.with_suffix(".webp")
        if fmt == "webp-alpha":
            out = rgb.copy()
            out.putalpha(Image.linear_gradient("L").resize(rgb.size))
            out.save(path, "WEBP", lossless=rng.random() < 0.5, method=rng.randint(0, 2), **kw)
        elif fmt == "webp-animated":
            frames = [rgb, rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
            frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], duration=100, method=0)
        else:
            rgb.save(path, "WEBP", quality=rng.randint(30, 95), method=rng.randint(0, 2), **kw)
    elif fmt == "tiff":
        path = path_stem.with_suffix(".tif")
        rgb.save(path, "TIFF", compression=rng.choice([None, "tiff_lzw", "tiff_deflate"]), **kw)
    else:
        path = path_stem.with_suffix(".bmp")
        rgb.save(path, "BMP")
    return path, feats


def image_file(rng: random.Random, stem: Path) -> tuple[Path, list[str]]:
    img, origin = _content(rng)
    img, size = _sized(rng, img)
    path, feats = save_image(rng, img, stem)
    return path, [origin, size] + feats


# ------------------------------------------------------------------ videos


def video_file(rng: random.Random, stem: Path) -> tuple[Path, list[str]]:
    """A short clip with random container, codec, size, frame rate and features."""
    import av

    kind = rng.choice(["mp4-h264", "mp4-h264-bframes", "mp4-mpeg4", "webm-vp8", "webm-vp9",
                       "mkv-h264", "mov-h264", "ts-mpeg2"])
    container_fmt, codec = {"mp4-h264": ("mp4", "libx264"), "mp4-h264-bframes": ("mp4", "libx264"),
                            "mp4-mpeg4": ("mp4", "mpeg4"), "webm-vp8": ("webm", "libvpx"),
                            "webm-vp9": ("webm", "libvpx-vp9"), "mkv-h264": ("matroska", "libx264"),
                            "mov-h264": ("mov", "libx264"), "ts-mpeg2": ("mpegts", "mpeg2video")}[kind]
    ext = {"mp4": ".mp4", "webm": ".webm", "matroska": ".mkv", "mov": ".mov", "mpegts": ".ts"}[container_fmt]
    feats = [kind]
    w, h = rng.choice([(96, 64), (160, 120), (98, 66), (64, 96), (200, 112), (48, 48)])
    if rng.random() < 0.2 and codec == "mpeg4":
        w, h = w + 1, h + 1
        feats.append(f"odd size {w}x{h}")
    fps = rng.choice([5, 10, 24, 25, 30])
    n = rng.choice([2, 3, 5, 12, 30, 60, 90])
    if n <= 3:
        feats.append(f"{n} frames (shorter than one sampling step)")
    vfr = rng.random() < 0.2 and container_fmt in ("mp4", "matroska", "mov")
    rotate = rng.random() < 0.2 and container_fmt in ("mp4", "mov")
    audio = rng.random() < 0.2 and container_fmt in ("mp4", "matroska", "webm", "mov")
    path = stem.with_suffix(ext)
    with av.open(str(path), mode="w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if kind == "mp4-h264-bframes":
            stream.codec_context.options = {"bf": "3", "g": "12"}
            feats.append("B-frames")
        if codec == "libx264":
            stream.codec_context.options = {**stream.codec_context.options, "preset": "ultrafast"}
        if rotate:
            stream.metadata["rotate"] = str(rng.choice([90, 180, 270]))
            feats.append(f"rotation {stream.metadata['rotate']} (side data, ignored as the reference)")
        astream = None
        if audio:
            astream = out.add_stream("aac" if container_fmt != "webm" else "libopus", rate=48000)
            feats.append("audio track")
        if vfr:
            feats.append("variable frame rate")
        pts = 0
        r = np.random.default_rng(rng.randrange(2**32))
        base = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for i in range(n):
            arr = np.roll(base, i * 3, axis=1)
            arr[: h // 4, :, i % 3] = (i * 37) % 256
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if vfr:  # irregular gaps between frames, in the stream's 1/fps units
                frame.pts = pts
                pts += rng.choice([1, 1, 2, 3])
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            samples = int(48000 * n / fps)
            t = np.arange(samples) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame_size = astream.codec_context.frame_size or 1024
            for k in range(0, samples - frame_size, frame_size):
                af = av.AudioFrame.from_ndarray(tone[None, k:k + frame_size], format="fltp", layout="mono")
                af.sample_rate = 48000
                af.pts = k
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path, feats


def frame_list(rng: random.Random, stem: Path) -> tuple[list[Any], list[str]]:
    """Frames of one size from mixed sources (paths of PNG/JPEG/WebP files, PIL images)."""
    n = rng.choice([1, 2, 3, 7, 10, 16, 64, 65, 80])
    w, h = rng.choice([(64, 48), (120, 90), (200, 150), (48, 200)])
    base, _ = _content(rng)
    base = base.convert("RGB").resize((w, h))
    frames, kinds = [], set()
    for k in range(n):
        img = base.rotate(k * 7 % 360)
        pick = rng.random()
        if pick < 0.4:
            path = stem.parent / f"{stem.name}-f{k}.png"
            img.save(path, compress_level=1)
            frames.append(str(path)); kinds.add("PNG files")
        elif pick < 0.7:
            path = stem.parent / f"{stem.name}-f{k}.jpg"
            img.save(path, quality=90)
            frames.append(str(path)); kinds.add("JPEG files")
        elif pick < 0.85:
            path = stem.parent / f"{stem.name}-f{k}.webp"
            img.save(path, lossless=True, method=0)
            frames.append(str(path)); kinds.add("WebP files")
        else:
            frames.append(img); kinds.add("PIL images")
    if len(kinds) > 1:
        kinds.add("mixed sources")
    return frames, [f"frame list of {n}" + (" (sampled to 64)" if n > 64 else "")] + sorted(kinds)


# ------------------------------------------------------------------ texts


SCRIPTS = {
    "latin": "The quick brown fox jumps over the lazy dog. Café naïve façade résumé.",
    "cjk": "敏捷的棕色狐狸跳过了懒狗。東京タワーは赤い。서울의 밤은 아름답다。",
    "arabic": "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "hebrew": "השועל החום המהיר קופץ מעל הכלב העצלן",
    "devanagari": "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю",
    "thai": "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ",
    "emoji": "🐱🐶 sunset 🌅 with family 👨‍👩‍👧‍👦 and 🇯🇵 flags",
    "greek": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία",
}
CONTROLS = ["\t", "\r\n", "\x0b", "\u200b", "\u202e", "\u2066", "\x00", "\ufeff", "  "]


def text(rng: random.Random) -> tuple[str, list[str]]:
    names = rng.sample(sorted(SCRIPTS), rng.randint(1, 3))
    words = " ".join(SCRIPTS[n] for n in names)
    if rng.random() < 0.3:
        words = words * rng.randint(2, 6)
    feats = [f"script {'+'.join(names)}"]
    form = rng.choice([None, "NFC", "NFD", "NFKC", "NFKD"])
    if form:
        words = unicodedata.normalize(form, words)
        feats.append(form)
    if rng.random() < 0.3:
        c = rng.choice(CONTROLS)
        pos = rng.randrange(len(words) + 1)
        words = words[:pos] + c + words[pos:]
        feats.append(f"control {c!r}")
    return words, feats


def texts(rng: random.Random) -> tuple[str | list[str], list[str]]:
    if rng.random() < 0.2:
        parts, feats = [], ["text list"]
        for _ in range(rng.randint(2, 4)):
            if rng.random() < 0.25:
                parts.append("")
                feats.append("empty part")
            else:
                t, f = text(rng)
                parts.append(t)
                feats += f
        return parts, feats
    if rng.random() < 0.05:
        return "", ["empty text"]
    return text(rng)


def instruction(rng: random.Random) -> tuple[str | None, list[str]]:
    pick = rng.random()
    if pick < 0.45:
        return None, []
    options = ["Retrieve images that match the query", "Find the product", "找到相关的图片。",
               "Represent this document for retrieval)", "Describe the scene 🐱", "",
               "  Find pet photos  ", "Qual é a imagem?", "Retrieve\ttext"]
    value = rng.choice(options)
    return value, [f"instruction {value!r}"]


# ------------------------------------------------------------------ bad inputs


def bad_item(rng: random.Random, stem: Path) -> tuple[dict, str, str, list[str]]:
    kind = rng.choice(["corrupt", "truncated", "aspect", "zero-frame", "bad-frame", "nan-fps"])
    if kind == "corrupt":
        path = stem.with_suffix(".png")
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(200)))
        return {"image": str(path)}, "image", "decode", ["corrupt PNG"]
    if kind == "truncated":
        buf = io.BytesIO()
        _render(rng, 300, 200).save(buf, "JPEG", quality=95)
        path = stem.with_suffix(".jpg")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        return {"image": str(path)}, "image", "decode", ["truncated JPEG"]
    if kind == "aspect":
        path = stem.with_suffix(".png")
        _render(rng, 201 * 4 + rng.randint(4, 400), 4).save(path)
        return {"image": str(path), "text": "wide"}, "image", "aspect ratio", ["aspect ratio above 200"]
    if kind == "zero-frame":
        from cases import zero_frame_mp4

        path = stem.with_suffix(".mp4")
        zero_frame_mp4(path)
        return {"video": str(path)}, "video", "video", ["zero-frame video"]
    if kind == "bad-frame":
        frames = []
        for k in range(3):
            path = stem.parent / f"{stem.name}-bf{k}.png"
            if k == 1:
                path.write_bytes(b"not an image at all")
            else:
                _render(rng, 64, 48).save(path)
            frames.append(str(path))
        return {"video": frames}, "video", "decode", ["frame list with a broken frame"]
    path, _ = video_file(rng, stem)
    return {"video": str(path), "fps": float("nan")}, "fps", "finite", ["fps=nan"]


# ------------------------------------------------------------------ cases


def _side(rng: random.Random, stem: Path, *, media_weight: float = 0.6) -> tuple[dict, list[str]]:
    """One multimodal object (an embedding item's content, a query or a document)."""
    obj: dict[str, Any] = {}
    feats: list[str] = []
    if rng.random() < media_weight:
        pick = rng.random()
        if pick < 0.6:
            n = 1 if rng.random() < 0.85 else 2
            paths = []
            for k in range(n):
                p, f = image_file(rng, stem.with_name(f"{stem.name}-i{k}"))
                paths.append(str(p))
                feats += f
            obj["image"] = paths[0] if n == 1 else paths
            if n == 2:
                feats.append("two images")
        elif pick < 0.8:
            p, f = video_file(rng, stem.with_name(f"{stem.name}-v"))
            obj["video"] = str(p)
            feats += f
        else:
            frames, f = frame_list(rng, stem.with_name(f"{stem.name}-fl"))
            obj["video"] = frames
            feats += f
    if rng.random() < 0.75 or not obj:
        t, f = texts(rng)
        obj["text"] = t
        feats += f
    return obj, feats


def embedding_cases(seed: int, n: int, root: Path) -> list[FuzzCase]:
    rng = random.Random(f"embedding-{seed}")
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        stem = root / f"e{i}"
        if rng.random() < 0.08:
            item, bad, fragment, feats = bad_item(rng, stem)
            cases.append(FuzzCase(f"e{i}", item, feats, bad=bad, fragment=fragment))
            continue
        if rng.random() < 0.04:  # over max_length: the reference keeps its first 8192 tokens
            words, feats = text(rng)
            item = {"text": (words + " ") * (1 + 9000 // max(1, len(words) // 3))}
            if rng.random() < 0.5:
                path, f = image_file(rng, stem)
                item["image"] = str(path)
                feats += f
            cases.append(FuzzCase(f"e{i}", item, feats + ["over max_length (cut)"], truncate=True))
            continue
        item, feats = _side(rng, stem)
        ins, f = instruction(rng)
        if ins is not None:
            item["instruction"] = ins
            feats += f
        if "video" in item and isinstance(item["video"], str) and rng.random() < 0.4:
            item["fps"] = rng.choice([0, 0.5, 1.0, 2.0, 4.0])
            item["max_frames"] = rng.choice([0, 2, 4, 8, 16, 64])
            feats.append(f"fps={item['fps']}, max_frames={item['max_frames']}")
        cases.append(FuzzCase(f"e{i}", item, feats))
    return cases


def rerank_cases(seed: int, n: int, root: Path) -> list[FuzzCase]:
    rng = random.Random(f"rerank-{seed}")
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        stem = root / f"r{i}"
        query, feats = _side(rng, stem.with_name(f"r{i}q"), media_weight=0.3)
        docs = []
        bad = None
        fragment = ""
        for d in range(rng.randint(1, 4)):
            if d == 1 and rng.random() < 0.1:
                doc, bad, fragment, f = bad_item(rng, stem.with_name(f"r{i}d{d}"))
                if bad == "fps":  # a request-level setting, not a document's
                    doc, bad, fragment, f = {"text": "x"}, None, "", []
            else:
                doc, f = _side(rng, stem.with_name(f"r{i}d{d}"))
            docs.append(doc)
            feats += [f"doc: {x}" for x in f]
        item: dict[str, Any] = {"query": query, "documents": docs}
        ins, f = instruction(rng)
        if ins is not None:
            item["instruction"] = ins
            feats += f
        cases.append(FuzzCase(f"r{i}", item, feats, bad=bad, fragment=fragment))
    return cases


def split(n: int) -> tuple[int, int]:
    """How ``n`` fuzz inputs divide between embedding and reranker cases."""
    rerank = max(1, n // 4)
    return n - rerank, rerank
