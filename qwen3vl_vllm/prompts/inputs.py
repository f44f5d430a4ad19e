"""Upstream input dicts -> chat conversations, exactly as the reference builds them (SPEC §1-2).

This is the one place that knows the prompt logic: the offline API, the client and the
reference all call it. It is pure (no I/O, no heavy imports): media stay as given (paths, URLs,
PIL images, bytes) and are loaded later by ``media``.

Content parts use qwen-vl-utils' format, so the reference can hand them to
``process_vision_info`` unchanged::

    {"type": "image", "image": src, "min_pixels": 4096, "max_pixels": 1843200}
    {"type": "video", "video": "clip.mp4", "fps": 1.0, "max_frames": 64}
    {"type": "video", "video": [frame, ...], "total_pixels": 7864320}
    {"type": "text", "text": "..."}

Example::

    >>> from qwen3vl_vllm.prompts.inputs import embedding_conversation
    >>> embedding_conversation({"text": "a cat", "instruction": "Find images"})[0]
    {'role': 'system', 'content': [{'type': 'text', 'text': 'Find images.'}]}
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from qwen3vl_vllm.errors import InputError

DEFAULT_EMBED_INSTRUCTION = "Represent the user's input."
DEFAULT_RERANK_INSTRUCTION = (
    "Given a search query, retrieve relevant candidates that answer the query."
)
RERANK_SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
EMBED_MAX_LENGTH = 8192
RERANK_MAX_LENGTH = 10240
NULL_TEXT = "NULL"

IMAGE_FACTOR = 32  # patch 16 x spatial merge 2: one token per 32x32 pixels
FRAME_LIST_FPS = 2.0  # qwen-vl-utils' sampling fps for frame lists

EMBED_KEYS = frozenset({"text", "image", "video", "instruction", "fps", "max_frames"})
MEDIA_KEYS = frozenset({"text", "image", "video"})


@dataclass(frozen=True)
class MediaSettings:
    """Pixel and frame bounds (the reference's constructor arguments)."""

    min_pixels: int = 4096
    max_pixels: int = 1843200
    total_pixels: int = 7864320
    fps: float = 1.0
    max_frames: int = 64

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError("need 0 < min_pixels <= max_pixels")
        if self.max_frames < 2 or self.fps <= 0 or self.total_pixels <= 0:
            raise ValueError("need max_frames >= 2, fps > 0 and total_pixels > 0")


DEFAULT_SETTINGS = MediaSettings()

# half of a UTF-16 pair on its own (a JSON "\ud83d" escape without its partner, a string cut
# between the two): not Unicode text, so no tokenizer takes it (the reference's raises TypeError)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
UNICODE_FIX = ("Send valid Unicode text: decode the bytes whole (UTF-8, or UTF-16 with both halves "
               "of each pair), or replace the bad characters, e.g. "
               "text.encode('utf-8', 'replace').decode()")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not Unicode text a tokenizer can take, else None.

    >>> unicode_problem("ok \\ud83d")
    'text is not valid Unicode: a lone surrogate U+D83D at character 3'
    """
    found = _LONE_SURROGATE.search(text)
    if found is None:
        return None
    return f"text is not valid Unicode: a lone surrogate U+{ord(found.group()):04X} at character {found.start()}"


def find_bad_text(value: Any, where: str = "") -> tuple[str, str] | None:
    """(place, problem) of the first string in a JSON value (a request body, a field of one)
    that is not Unicode text, named from ``where``.

    >>> find_bad_text({"input": ["ok", "a\\udfff"]})
    ('input[1]', 'text is not valid Unicode: a lone surrogate U+DFFF at character 1')
    """
    if isinstance(value, str):
        problem = unicode_problem(value)
        return (where or "request body", problem) if problem else None
    if isinstance(value, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next(filter(None, (find_bad_text(v, place) for place, v in children)), None)


def _check_text(where: str, text: Any, what: str = "text ") -> None:
    if not isinstance(text, str):
        raise InputError(where, f"{what}must be a string, got {type(text).__name__}")
    problem = unicode_problem(text)
    if problem:
        raise InputError(where, problem, UNICODE_FIX)


def format_instruction(instruction: str | None, default: str = DEFAULT_EMBED_INSTRUCTION) -> str:
    """The embedder's instruction rule: strip; empty -> default; end with punctuation.

    A '.' is appended unless the last character is Unicode punctuation (category P*).
    """
    if instruction is None:
        return default
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
    text = instruction.strip()
    if not text:
        return default
    if not unicodedata.category(text[-1]).startswith("P"):
        text += "."
    return text


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg")  # upstream's


def _is_image_path(value: Any) -> bool:
    """Upstream ``is_image_path``: the extension (of a URL's path, query left out) is an
    image's. A ``data:image/...`` URL counts as an image too (upstream has no data URLs)."""
    text = os.fspath(value)
    if text.lower().startswith("data:"):
        return text.lower().startswith("data:image/")
    if text.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        text = urlparse(text).path
    return os.path.splitext(text.lower())[1] in IMAGE_EXTENSIONS


def _is_one_video(value: Any) -> bool:
    """Upstream ``is_video_input``: is ``value`` one video (else a list of videos)?

    A string is one video file; a list is one video given as frames when its *first* element
    is a frame: a PIL image, or a path/URL with an image's extension. Anything else in first
    place (a video file name of any extension, an extension-less URL, a list of frames) makes
    the list a list of videos, exactly as upstream decides. Beyond upstream: a path object
    counts as a string, a ``(frames, metadata)`` tuple or a THWC array is one video, and a first
    element that is an HxWx3 array or encoded bytes is a frame.
    """
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        return True
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        return True
    if hasattr(value, "ndim"):
        return getattr(value, "ndim", 0) == 4
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, (str, os.PathLike)):
            return _is_image_path(first)
        if hasattr(first, "ndim"):
            return first.ndim == 3
        if isinstance(first, (bytes, bytearray)):
            return True
        return hasattr(first, "mode") and hasattr(first, "size")  # a PIL image
    return False


def split_videos(value: Any) -> list:
    """One video or a list of videos -> a list of videos (upstream's rule, ``_is_one_video``).

    >>> split_videos(["clip.ts"]), split_videos(["f1.png", "f2.png"])
    (['clip.ts'], [['f1.png', 'f2.png']])
    """
    if value is None:
        return []
    if _is_one_video(value):
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def video_setting(where: str, value: Any, kind: type, minimum: float):
    """An item's ``fps``/``max_frames``: upstream's ``value or default`` (so ``None`` and 0 mean
    the default: returns None), else a finite number of the right kind, at least ``minimum``."""
    import math

    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise InputError(where, f"must be a {'number' if kind is float else 'whole number'}, "
                                f"got {type(value).__name__}")
    if not math.isfinite(value):
        raise InputError(where, f"must be a finite number, got {value}",
                         "Give e.g. 1.0, or leave it out (or 0) for the default")
    if value < minimum:
        raise InputError(where, f"must be >= {minimum} (or 0 for the default), got {value}")
    return value


def sample_frame_list(frames: Sequence[Any], max_frames: int) -> list:
    """The reference's frame-list reduction (upstream ``sample_frames``).

    A list of ``n <= max_frames`` frames is used exactly as given: never stretched or repeated.
    A longer list keeps ``int(linspace(0, n-1, max_frames))``, numpy's indices.
    """
    n = len(frames)
    if n <= max_frames:
        return list(frames)
    if max_frames == 1:
        return [frames[0]]
    step = (n - 1) / (max_frames - 1)
    # numpy's linspace computes start + i*step (the last one exactly n-1); int() truncates.
    idx = [int(i * step) for i in range(max_frames - 1)] + [n - 1]
    return [frames[i] for i in idx]


def content_parts(obj: Mapping[str, Any], *, where: str, settings: MediaSettings = DEFAULT_SETTINGS,
                  fps: float | None = None, max_frames: int | None = None) -> list[dict]:
    """A multimodal object -> its content parts, ordered videos, images, texts (no NULL here).

    ``fps``/``max_frames`` apply to video files (the item's values, else the settings');
    frame lists are reduced to ``settings.max_frames`` and carry ``total_pixels``.
    """
    parts: list[dict] = []
    file_fps = settings.fps if fps is None else fps
    file_max_frames = settings.max_frames if max_frames is None else max_frames
    for j, video in enumerate(split_videos(obj.get("video"))):
        w = f"{where}.video[{j}]"
        if isinstance(video, (str, os.PathLike, bytes, bytearray)):
            source = bytes(video) if isinstance(video, (bytes, bytearray)) else os.fspath(video)
            parts.append({"type": "video", "video": source, "fps": float(file_fps),
                          "max_frames": int(file_max_frames)})
        elif isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], Mapping):
            parts.append({"type": "video", "video": video, "total_pixels": settings.total_pixels})
        else:
            frames = list(video)
            if not frames:
                raise InputError(w, "a video given as frames has no frames",
                                 "Give at least one frame, or leave the video out")
            parts.append({"type": "video",
                          "video": sample_frame_list(frames, settings.max_frames),
                          "total_pixels": settings.total_pixels})
    for j, image in enumerate(_as_list(obj.get("image"))):
        if image is None or (isinstance(image, str) and not image.strip()):
            raise InputError(f"{where}.image[{j}]", "empty image reference",
                             "Give a path, URL, data URL, bytes or a PIL image")
        parts.append({"type": "image", "image": image, "min_pixels": settings.min_pixels,
                      "max_pixels": settings.max_pixels})
    for j, text in enumerate(_as_list(obj.get("text"))):
        _check_text(f"{where}.text[{j}]", text)
        parts.append({"type": "text", "text": text})
    return parts


def _check_keys(obj: Any, where: str, allowed: frozenset) -> None:
    if not isinstance(obj, Mapping):
        raise InputError(where, f"must be a dict with keys from {sorted(allowed)}, "
                                f"got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(where, f"unknown key(s) {unknown}", f"Allowed keys: {sorted(allowed)}")


def embedding_conversation(item: Mapping[str, Any], *, index: int | None = None,
                           settings: MediaSettings = DEFAULT_SETTINGS,
                           default_instruction: str = DEFAULT_EMBED_INSTRUCTION) -> list[dict]:
    """One embedding input dict -> the reference conversation (system + user turns)."""
    where = "input" if index is None else f"inputs[{index}]"
    _check_keys(item, where, EMBED_KEYS)
    fps = video_setting(f"{where}.fps", item.get("fps"), float, 1e-6)
    max_frames = video_setting(f"{where}.max_frames", item.get("max_frames"), int, 2)
    instruction = item.get("instruction")
    if instruction is not None:
        _check_text(f"{where}.instruction", instruction, "")
    parts = content_parts(item, where=where, settings=settings, fps=fps, max_frames=max_frames)
    if not parts:
        parts = [{"type": "text", "text": NULL_TEXT}]
    system = format_instruction(instruction, default=default_instruction)
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": parts},
    ]


@dataclass(frozen=True)
class RerankRequest:
    """A validated reranker input: the query and documents as content-part lists."""

    instruction: str
    query: list[dict]
    documents: list[list[dict]] = field(default_factory=list)


RERANK_KEYS = frozenset({"instruction", "query", "documents", "fps", "max_frames"})


def rerank_request(inputs: Mapping[str, Any], *, settings: MediaSettings = DEFAULT_SETTINGS,
                   default_instruction: str = DEFAULT_RERANK_INSTRUCTION) -> RerankRequest:
    """Validate an upstream reranker input dict and turn each side into content parts.

    An empty query dict or an empty documents list is an error (the reference would silently
    return no scores). A side with no content becomes the text "NULL". No punctuation rule is
    applied to the instruction (only the embedder has one).
    """
    _check_keys(inputs, "inputs", RERANK_KEYS)
    fps = video_setting("inputs.fps", inputs.get("fps"), float, 1e-6)
    max_frames = video_setting("inputs.max_frames", inputs.get("max_frames"), int, 2)
    query = inputs.get("query")
    _check_keys(query, "query", MEDIA_KEYS)
    if not query:
        raise InputError("query", "the query is empty", "Give it a text, image or video")
    documents = inputs.get("documents")
    if not isinstance(documents, (list, tuple)) or not documents:
        raise InputError("documents", "need a non-empty list of documents",
                         "Give at least one {'text'|'image'|'video': ...} dict")
    instruction = inputs.get("instruction")
    if instruction is not None:
        _check_text("instruction", instruction, "")
    q_parts = content_parts(query, where="query", settings=settings, fps=fps, max_frames=max_frames)
    docs = []
    for i, doc in enumerate(documents):
        _check_keys(doc, f"documents[{i}]", MEDIA_KEYS)
        docs.append(content_parts(doc, where=f"documents[{i}]", settings=settings, fps=fps,
                                  max_frames=max_frames)
                    or [{"type": "text", "text": NULL_TEXT}])
    return RerankRequest(
        instruction=instruction or default_instruction,  # upstream: `instruct or default`
        query=q_parts or [{"type": "text", "text": NULL_TEXT}],
        documents=docs,
    )


def rerank_conversation(instruction: str, query: list[dict], document: list[dict]) -> list[dict]:
    """One (query, document) pair -> the reference reranker conversation."""
    user = ([{"type": "text", "text": f"<Instruct>: {instruction}"},
             {"type": "text", "text": "<Query>:"}]
            + list(query)
            + [{"type": "text", "text": "\n<Document>:"}]
            + list(document))
    return [
        {"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]
