"""ASGI middleware: name the offending item in vLLM's media errors, and make them 4xx.

vLLM answers a request with one broken image among twenty documents with a bare
``400 Failed to load image: cannot identify image file`` -- or, for a decompression bomb or an
unreachable media URL, with a ``500`` although the server is fine and the input is at fault. On
those error paths only, this middleware re-reads the request it already buffered, finds the item
(the first data-URL image/video that does not decode, or the URL the error names), and answers
400 naming it (``documents[1].content[0]``, ``messages[1].content[0]``) and saying what to do.
Successful responses pass through untouched (no decoding on the hot path).

Honest status codes: a 500 becomes a 400 only when an input item is found and named. Anything
else (an engine fault, a timeout inside the server, a text-only request) stays a 5xx, which
clients retry. The search runs in a worker thread, bounded in time (``NAMING_TIMEOUT_S``) and in
bytes (payloads over ``MAX_DECODE_BYTES`` are not decoded), so failing requests with large
images never stall the event loop that serves everyone else.

The plugin adds it to ``vllm serve`` through vLLM's public ``--middleware`` option.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

REMOTE_OFF_DOMAIN = "remote-fetch-is-off.invalid"  # qwen3vl-vllm serve with media.remote_fetch off
WATCHED = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/embeddings",
           "/pooling", "/classify")
# vLLM 500s that are really bad input
INPUT_500_MARKERS = ("Cannot load local files", "allowed-local-media-path", "allowed domains",
                     "decompression bomb", "exceeds limit of", "Max retries exceeded with url",
                     "Connection refused", "Failed to load", "cannot identify image",
                     "Name or service not known", "timed out", "Read timed out")
# 400 messages about one media item (vLLM's and the package's media connector's)
MEDIA_MARKERS = ("Cannot load local files", "allowed-local-media-path", "allowed domains",
                 "Failed to load image", "Failed to load video", "cannot identify image",
                 "image file is truncated", "Failed to load", "Invalid image", "decompression bomb",
                 "cannot decode", "decodable frames", "no video stream", "data is empty",
                 "zero size", "no pixels")
FIX = "Send a valid PNG, JPEG, WebP or GIF (as a data URL or URL), or leave the item out"
NAMING_TIMEOUT_S = 5.0
MAX_DECODE_BYTES = 40 * 1024 * 1024  # base64 characters of one item (~30 MB of file)


def payload_fingerprint(payload: str) -> str:
    """A cheap id of a data URL's payload (its start and length, no decoding): the media
    connector puts it in its error messages (``item#<id>``) so the item is found without
    decoding anything again."""
    import hashlib

    return hashlib.sha1(f"{len(payload)}:{payload[:4096]}".encode()).hexdigest()[:12]


def _by_fingerprint(body: dict, fingerprint: str) -> tuple[str, str] | None:
    for key in KEYS:
        if key in body:
            for where, kind, url in _parts(key, body[key]):
                if payload_fingerprint(url.partition(",")[2]) == fingerprint:
                    return where, kind
    return None


def _decodes(url: str, kind: str) -> bool:
    from PIL import Image

    head, _, payload = url.partition(",")
    if len(payload) > MAX_DECODE_BYTES:
        return True  # too large to judge here: not named (the error still reaches the client)
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


def _parts(where: str, value: Any, remote: bool = False):
    """Yield (where, kind, url) for every data-URL (and, with ``remote``, any) media part."""
    if isinstance(value, dict):
        content = value.get("content")
        if isinstance(content, list):
            for k, part in enumerate(content):
                yield from _parts(f"{where}.content[{k}]", part, remote)
            return
        for kind in ("image", "video"):
            block = value.get(f"{kind}_url")
            url = block.get("url") if isinstance(block, dict) else block
            if isinstance(url, str) and (remote or url.startswith("data:")):
                yield where, kind, url
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _parts(f"{where}[{k}]", item, remote)


KEYS = ("query", "queries", "documents", "items", "data_1", "data_2", "text_1", "text_2",
        "messages", "input")


def find_bad_item(body: dict, message: str = "") -> tuple[str, str] | None:
    """(where, kind) of the item an error is about: a remote URL the message names, else the
    first data-URL media item that does not decode; None when neither is found."""
    if not isinstance(body, dict):
        return None
    tagged = re.search(r"item#([0-9a-f]{12})", message)
    if tagged:  # the package's media connector named the payload: no decoding needed
        found = _by_fingerprint(body, tagged.group(1))
        if found:
            return found
    local = "local files" in message or "allowed-local-media-path" in message or "outside" in message
    for key in KEYS:
        if key in body:
            for where, kind, url in _parts(key, body[key], remote=True):
                if local and url.startswith("file://"):
                    return where, kind
                if "allowed domains" in message and url.startswith(("http://", "https://")):
                    host = url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
                    if host and host in message:
                        return where, kind
                if not url.startswith("data:"):
                    tail = url.split("://", 1)[-1]
                    if tail and (tail in message or tail.split("/", 1)[-1] in message):
                        return where, kind
    for key in KEYS:
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
        chunks: list[bytes] = []  # references to what the app reads: no copy on the hot path

        async def tee():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        start: dict | None = None
        buffered: list[bytes] = []
        started = False

        async def intercept(message):
            nonlocal start, started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in (400, 500):
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
            status, body = await self._rewrite_off_loop(start["status"], b"".join(buffered),
                                                        b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            await self.app(scope, tee, intercept)
        except Exception as exc:  # noqa: BLE001 - vLLM lets some input faults escape as 500s
            if started or not any(m.lower() in str(exc).lower() for m in INPUT_500_MARKERS):
                raise
            error = {"error": {"message": str(exc), "type": "InternalServerError", "param": None,
                               "code": 500}}
            status, body = await self._rewrite_off_loop(500, json.dumps(error).encode(),
                                                        b"".join(chunks))
            if status == 500:
                raise
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _rewrite_off_loop(self, status: int, response: bytes, request: bytes) -> tuple[int, bytes]:
        """``_rewrite`` in a worker thread, given at most ``NAMING_TIMEOUT_S``."""
        import asyncio

        try:
            return await asyncio.wait_for(asyncio.to_thread(self._rewrite, status, response, request),
                                          NAMING_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a timeout or a bug: the original error, unchanged
            return status, response

    @staticmethod
    def _rewrite(status: int, response: bytes, request: bytes) -> tuple[int, bytes]:
        """(status, body) to send: unchanged unless the error is about an input item."""
        try:
            payload = json.loads(response)
            error = payload["error"]
            message = str(error.get("message", ""))
            markers = MEDIA_MARKERS if status == 400 else INPUT_500_MARKERS
            if not any(m.lower() in message.lower() for m in markers):
                return status, response
            found = find_bad_item(json.loads(request), message)
            if found is None:  # no input to name: a 500 is a server fault and stays one
                return status, response
            where, kind = found
            if REMOTE_OFF_DOMAIN in message:
                text = (f"{where}: this server does not fetch media URLs (media.remote_fetch is "
                        f"off). Send the {kind} as a data URL")
            elif "local files" in message or "allowed-local-media-path" in message:
                text = (f"{where}: this server reads no local files ({message}). Send the {kind} "
                        "as a data URL, or serve with media.local_media_dir")
            else:
                tag = re.match(r"^item#[0-9a-f]{12}(\.frames\[\d+\])?: ", message)
                if tag:  # "item#<id>.frames[2]: ..." -> "messages[1].content[0].frames[2]: ..."
                    where, message = where + (tag.group(1) or ""), message[tag.end():]
                text = (f"{where}: cannot {'load' if status == 500 else 'decode'} the {kind} "
                        f"({message}). {FIX}")
            error.update(code=400, type="BadRequestError", message=text)
            return 400, json.dumps(payload).encode()
        except Exception:  # noqa: BLE001 - never make an error response worse
            return status, response
