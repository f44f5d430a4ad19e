"""ASGI middleware: name the offending item in vLLM's media errors.

vLLM answers a request with one broken image among twenty documents with a bare
``400 Failed to load image: cannot identify image file``. On that error path only, this
middleware re-reads the request it already buffered, finds the first data-URL image/video that
does not decode, and rewrites the message to name it (``documents[1]``, ``messages[1].content[0]``)
and say what to do. Successful responses pass through untouched (no decoding on the hot path).

The plugin adds it to ``vllm serve`` through vLLM's public ``--middleware`` option.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

WATCHED = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/embeddings",
           "/pooling", "/classify")
MEDIA_MARKERS = ("Failed to load image", "Failed to load video", "cannot identify image",
                 "image file is truncated", "Failed to load", "Invalid image", "decompression bomb",
                 "cannot decode", "video", "image")
FIX = "Send a valid PNG, JPEG, WebP or GIF (as a data URL or URL), or leave the item out"


def _decodes(url: str, kind: str) -> bool:
    from PIL import Image

    head, _, payload = url.partition(",")
    try:
        if kind == "video" and head.lower().startswith("data:video/jpeg"):
            frames = payload.split(",")
        else:
            frames = [payload]
        for frame in frames:
            data = base64.b64decode(frame, validate=False)
            if kind == "video" and not head.lower().startswith("data:video/jpeg"):
                return bool(data)  # a video file: only emptiness can be judged cheaply here
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.width == 0 or img.height == 0:
                    return False
        return True
    except Exception:  # noqa: BLE001 - any decoding failure (incl. decompression bombs)
        return False


def _parts(where: str, value: Any):
    """Yield (where, kind, url) for every data-URL media part below ``value``."""
    if isinstance(value, dict):
        content = value.get("content")
        if isinstance(content, list):
            for k, part in enumerate(content):
                yield from _parts(f"{where}.content[{k}]", part)
            return
        for kind in ("image", "video"):
            block = value.get(f"{kind}_url")
            url = block.get("url") if isinstance(block, dict) else block
            if isinstance(url, str) and url.startswith("data:"):
                yield where, kind, url
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _parts(f"{where}[{k}]", item)


def find_bad_item(body: dict) -> tuple[str, str] | None:
    """(where, kind) of the first data-URL media item that does not decode, else None."""
    for key in ("query", "queries", "documents", "items", "data_1", "data_2", "text_1", "text_2",
                "messages", "input"):
        if key in body:
            for where, kind, url in _parts(key, body[key]):
                if not _decodes(url, kind):
                    return where, kind
    return None


class NameBadItemsMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in WATCHED:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        request_body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": request_body, "more_body": False}
            return await receive()

        start: dict | None = None
        buffered: list[bytes] = []

        async def intercept(message):
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] == 400:
                    start = message
                    return
                await send(message)
                return
            if start is None:
                await send(message)
                return
            buffered.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = self._rewrite(b"".join(buffered), request_body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, replay, intercept)

    @staticmethod
    def _rewrite(response: bytes, request: bytes) -> bytes:
        try:
            payload = json.loads(response)
            error = payload["error"]
            message = str(error.get("message", ""))
            if not any(m in message for m in MEDIA_MARKERS):
                return response
            found = find_bad_item(json.loads(request))
            if found is None:
                return response
            where, kind = found
            error["message"] = f"{where}: cannot decode the {kind} ({message}). {FIX}"
            return json.dumps(payload).encode()
        except Exception:  # noqa: BLE001 - never make an error response worse
            return response
