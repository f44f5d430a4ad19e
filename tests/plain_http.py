"""Plain HTTP request bodies built from upstream input dicts with *original* media and no
project code: what a curl, JavaScript or Go caller sends (file bytes as data URLs, original
frames, the mp4 itself with its fps/max_frames as data-URL parameters)."""

from __future__ import annotations

import base64
import io
import mimetypes
import unicodedata
from pathlib import Path

from PIL import Image


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _file_url(path) -> str:
    if isinstance(path, Image.Image):
        return "data:image/png;base64," + _b64(_png(path))
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64," + _b64(Path(path).read_bytes())


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # the frame's own mode: the server converts as the reference does
    return buf.getvalue()


def _listify(v):
    return [] if v is None else (list(v) if isinstance(v, list) else [v])


def plain_parts(obj: dict, fps=None, max_frames=None) -> list[dict]:
    """OpenAI content parts in the reference's order: videos, images, texts."""
    parts = []
    video = obj.get("video")
    if isinstance(video, str):
        params = "".join(f";{k}={v}" for k, v in (("fps", fps), ("max_frames", max_frames)) if v)
        url = _file_url(video).replace(";base64,", params + ";base64,", 1)
        parts.append({"type": "video_url", "video_url": {"url": url}})
    elif video is not None:
        frames = ",".join(_b64(_png(f)) for f in video)
        parts.append({"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + frames}})
    for img in _listify(obj.get("image")):
        parts.append({"type": "image_url", "image_url": {"url": _file_url(img)}})
    for text in _listify(obj.get("text")):
        parts.append({"type": "text", "text": text})
    return parts


def plain_embedding_body(model: str, item: dict) -> dict:
    instruction = (item.get("instruction") or "").strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    parts = plain_parts(item, item.get("fps"), item.get("max_frames")) or [{"type": "text", "text": "NULL"}]
    return {"model": model, "add_generation_prompt": True, "encoding_format": "float",
            "messages": [{"role": "system", "content": instruction or "Represent the user's input."},
                         {"role": "user", "content": parts}]}


def plain_side(obj: dict, fps=None, max_frames=None):
    if set(obj) == {"text"} and isinstance(obj["text"], str):
        return obj["text"]  # "" included: an empty text part
    return {"content": plain_parts(obj, fps, max_frames)}  # {} -> {"content": []}: NULL
