"""Upstream input dicts -> OpenAI chat content and request bodies for a qwen3vl-vllm server.

The conversation comes from ``inputs`` (the one prompt module); media are checked here (a bad
item fails, named, before anything is sent) and sent in the form the server's media connector
prepares exactly as the reference does: image files as their original bytes, in-memory images
resized like qwen-vl-utils as lossless PNG, a frame list as its sampled original frames, a video
file as itself with the item's fps/max_frames as data-URL parameters. Shared by both clients and
the benchmarks; no transport here.

Example::

    from qwen3vl_vllm.clients.messages import embedding_body
    body = embedding_body({"text": "a cat"}, index=0, model="m", instruction=None,
                          dimensions=None, encoding_format="float")
"""

from __future__ import annotations

import base64
import os
from typing import Any, Mapping

from qwen3vl_vllm.errors import InputError, MediaError
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, MediaSettings, embedding_conversation
from qwen3vl_vllm.media.decode import (check_video_bytes, encode_png, fetch_image, load_image,
                                       png_data_url, smart_resize)
from qwen3vl_vllm.media.sources import DEFAULT_POLICY, MediaPolicy, source_bytes


def _frame_list_url(frames: list, where: str, policy: MediaPolicy) -> str:
    """A frame list (already reduced to ``max_frames`` by ``inputs``) as its original frames:
    JPEG and PNG files as their own bytes, every other frame converted to RGB by the reference's
    rule and sent as a lossless PNG. The server's media connector then resizes each frame and the clip exactly as the reference does (pre-resized
    frames would be resized a second time there)."""
    encoded = []
    for k, frame in enumerate(frames):
        w = f"{where}.frames[{k}]"
        if isinstance(frame, (str, bytes, bytearray, memoryview, os.PathLike)):
            data = source_bytes(frame, w, policy)
            image = load_image(data, w, policy)  # full decode: a corrupt frame fails before sending
            if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
                # JPEG and PNG frames travel as their own bytes: the server decodes them as this
                # process does (the same RGB rule). A 320x240 photo frame: JPEG 11 KB, decoded in
                # 0.37 ms; its PNG re-encoding 67 KB, 2.2 ms (PIL, this machine, 2026-12-02)
                encoded.append(base64.b64encode(data).decode("ascii"))
                continue
        else:
            image = load_image(frame, w, policy)
        encoded.append(base64.b64encode(encode_png(image)).decode("ascii"))
    # "data:video/jpeg;base64,<f1>,<f2>,..." is vLLM's frame-list form; PNG payloads decode too
    # (lossless): the media type only selects the frame-list reader.
    return "data:video/jpeg;base64," + ",".join(encoded)


def _video_file_url(part: dict, where: str, policy: MediaPolicy) -> str:
    """A video file travels as itself; the server's ``qwen3vl`` loader samples it like the
    reference, with the item's fps/max_frames carried as data-URL parameters."""
    data = source_bytes(part["video"], where, policy)
    check_video_bytes(data, where)
    name = str(part["video"]).split("?", 1)[0].lower()
    ext = name.rsplit(".", 1)[-1] if "." in name[-6:] else "mp4"
    mime = {"mkv": "video/x-matroska", "mov": "video/quicktime", "avi": "video/x-msvideo"}.get(
        ext, f"video/{ext}" if ext in ("mp4", "webm", "mpeg") else "video/mp4")
    params = f";fps={float(part['fps'])!r};max_frames={int(part['max_frames'])}"
    return f"data:{mime}{params};base64," + base64.b64encode(data).decode("ascii")


def _image_url(part: dict, where: str, policy: MediaPolicy) -> str:
    """An image as a data URL the server prepares exactly as the reference does.

    Encoded sources (path, ``file://``, URL, data URL, bytes) travel as their original bytes:
    measured end to end (``benchmarks/image_transport.py``, 1280x960 JPEGs, c=8) that is 1.15x
    the requests/s of pre-resized PNGs, 1/9 of the bytes and ~0 client CPU, with identical
    vectors. They are still decoded here first, so a bad item fails before anything is sent.
    In-memory images (PIL, arrays) have no original bytes: they are resized like the reference
    and sent as lossless PNG (the server keeps an image at its final size bit-identical).
    """
    import io

    from PIL import Image

    src = part["image"]
    if isinstance(src, Image.Image) or (hasattr(src, "ndim") and hasattr(src, "dtype")):
        return png_data_url(fetch_image(part, where, policy))
    data = source_bytes(src, where, policy)
    image = load_image(data, where, policy)  # full decode: corrupt or truncated files fail here
    try:
        smart_resize(image.height, image.width, min_pixels=part["min_pixels"],
                       max_pixels=part["max_pixels"])
    except ValueError as e:
        raise MediaError(where, str(e), "Crop or pad the image to a less extreme shape") from None
    fmt = Image.open(io.BytesIO(data)).format
    mime = Image.MIME.get(fmt or "", "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def openai_parts(parts: list[dict], where: str, policy: MediaPolicy,
                 settings: MediaSettings = DEFAULT_SETTINGS) -> list[dict]:
    """Content parts -> OpenAI chat content that the server turns into the reference's pixels.

    Encoded images travel as their original bytes, in-memory ones resized as PNG (see
    ``_image_url``); frame lists as their original frames and video files as themselves, all
    prepared by the server's media connector exactly as the reference prepares them.
    """
    out, n_img, n_vid = [], 0, 0
    for part in parts:
        if part["type"] == "image":
            url = _image_url(part, f"{where}.image[{n_img}]", policy)
            out.append({"type": "image_url", "image_url": {"url": url}})
            n_img += 1
        elif part["type"] == "video":
            w = f"{where}.video[{n_vid}]"
            video = part["video"]
            if isinstance(video, (str, os.PathLike)):
                url = _video_file_url(part, w, policy)
            elif isinstance(video, tuple):
                raise InputError(w, "a pre-decoded (frames, metadata) video cannot be sent to a "
                                 "server", "Send the frames as a list, or use the offline API")
            else:
                url = _frame_list_url(list(video), w, policy)
            out.append({"type": "video_url", "video_url": {"url": url}})
            n_vid += 1
        else:
            out.append({"type": "text", "text": part["text"]})
    return out


def embedding_messages(item: Mapping[str, Any], *, index: int, instruction: str | None = None,
                       settings: MediaSettings = DEFAULT_SETTINGS,
                       policy: MediaPolicy = DEFAULT_POLICY) -> list[dict]:
    """One input dict -> the chat messages for ``/v1/embeddings`` (reference prompt)."""
    if instruction is not None and isinstance(item, Mapping) and "instruction" not in item:
        item = {**item, "instruction": instruction}
    conv = embedding_conversation(item, index=index, settings=settings)
    return [
        {"role": "system", "content": conv[0]["content"][0]["text"]},
        {"role": "user", "content": openai_parts(conv[1]["content"], f"inputs[{index}]", policy,
                                                 settings=settings)},
    ]


# what asks the server for the reference's cut of an over-long input (``embed_inputs``):
# vLLM's field, -1 meaning max_model_len, keeping the start as the reference does
TRUNCATE_FIELDS = {"truncate_prompt_tokens": -1, "truncation_side": "right"}


def embedding_body(item: Mapping[str, Any], *, index: int, model: str, instruction: str | None,
                   dimensions: int | None, encoding_format: str,
                   settings: MediaSettings = DEFAULT_SETTINGS,
                   policy: MediaPolicy = DEFAULT_POLICY, truncate: bool = False) -> dict:
    """The ``/v1/embeddings`` request body for one input dict; ``truncate`` asks for the
    reference's cut of an over-long input (its first ``max_model_len`` tokens)."""
    body = {
        "model": model,
        "messages": embedding_messages(item, index=index, instruction=instruction,
                                       settings=settings, policy=policy),
        "add_generation_prompt": True,
        "encoding_format": encoding_format,
    }
    if dimensions is not None:
        body["dimensions"] = dimensions
    if truncate:
        body.update(TRUNCATE_FIELDS)
    return body
