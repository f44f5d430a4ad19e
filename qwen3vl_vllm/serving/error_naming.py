"""ASGI middleware: name the offending item in vLLM's media errors, and make them 4xx.

vLLM answers a request with one broken image among twenty documents with a bare
``400 Failed to load image: cannot identify image file`` -- or, for a decompression bomb or an
unreachable media URL, with a ``500`` although the server is fine and the input is at fault. On
those error paths only, this middleware re-reads the request it already buffered, finds the item
(the payload the package's media connector tagged ``item#<key>``, a URL the error names, or the
first data-URL image/video that does not decode), and answers 400 naming it
(``documents[1].content[0]``, ``messages[1].content[0]``) and saying what to do. Successful
responses pass through untouched (no decoding on the hot path).

Honest status codes: a 500 becomes a 400 only when an input item is found and named. Anything
else (an engine fault, a timeout inside the server, a text-only request) stays a 5xx, which
clients retry; a request refused because the process holds as much decoded media as it may
(``budget``) becomes a 503 with ``Retry-After``. The search runs in a worker thread with a
deadline (``NAMING_TIMEOUT_S``) that it checks between items and frames, so it stops when its
time is up, and payloads over ``MAX_DECODE_BYTES`` are not decoded: failing requests with large
images never stall the event loop that serves everyone else.

The key is a SHA-256 digest of the whole payload (``payload_key``), computed only on the error
path, so two different items can never be taken for one another.

The plugin adds it to ``vllm serve`` through vLLM's public ``--middleware`` option; it watches
every POST route (SageMaker's ``/invocations`` and Cohere's ``/v2/embed`` included).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from typing import Any

from qwen3vl_vllm.media.budget import BUSY_MARKER
from qwen3vl_vllm.prompts.inputs import UNICODE_FIX, find_bad_text
from qwen3vl_vllm.serving.settings import REMOTE_OFF_DOMAIN

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
                 "zero size", "no pixels", "does not fetch media URLs", "not a regular file",
                 "file not found", "is a directory", "permission denied", "points to",
                 "timed out after", "download exceeds", "URL answered HTTP", "cannot fetch",
                 "cannot resolve the host", "not one of the allowed domains")
# problems that are not a broken file (a limit, a shape, a refused or failed fetch or read):
# their message says what to do already and is passed on as it is
LIMIT_MARKERS = ("QWEN3VL_MAX_", "VLLM_MAX_", "aspect ratio", "resolution changes",
                 "above this server's limit", "different sizes", "points to", "timed out after",
                 "download exceeds", "URL answered HTTP", "cannot fetch", "cannot resolve the host",
                 "not one of the allowed domains", "not a regular file", "file not found",
                 "is a directory", "permission denied", "above the", "more than")
FIX = "Send a valid PNG, JPEG, WebP or GIF (as a data URL or URL), or leave the item out"
NAMING_TIMEOUT_S = 5.0
MAX_DECODE_BYTES = 40 * 1024 * 1024  # base64 characters of one item (~30 MB of file)
KEY = re.compile(r"item#([0-9a-f]{32})")
RETRY_AFTER_S = 2
# vLLM's answer to an input over max_model_len, and how to get the reference's cut instead
TOO_LONG = "maximum context length"
EMBED_KEYS = ("input", "messages", "texts", "images", "inputs")
# the reference keeps every special token of a long pair (an "<|im_end|>" or "<|image_pad|>"
# written in a text too) and cuts plain tokens only, so a pair with more of them than fit
# stays over the limit, and the reference scores it at a length the server cannot take
PAIR_FIX = ("A pair over 10,240 tokens is cut as the reference cuts it, but not one holding a "
            "video, nor one whose special tokens alone (the reference keeps them all, also when a "
            "text spells them, e.g. \"<|im_end|>\") are over the limit: shorten its texts, remove "
            "special-token strings from them, or send the video with fewer frames (max_frames)")
# what HF tokenizers say of a text that is not Unicode (a lone surrogate), naming nothing
NOT_UNICODE = "TextEncodeInput must be"
TRUNCATE_FIX = ("To embed its first max_model_len tokens as the reference does, send "
                "\"truncate_prompt_tokens\": -1 (Cohere /v2/embed: \"truncate\": \"END\"), or start "
                "the server with QWEN3VL_TRUNCATE=1 (YAML: server.truncate: true)")


class _OutOfTime(Exception):
    pass


def payload_key(payload: str) -> str:
    """A collision-free id of a data URL's payload: SHA-256 of all of it, computed only on the
    error path. The media connector puts it in its error messages (``item#<key>``) and this
    middleware finds the item by the same digest, without decoding anything again."""
    return hashlib.sha256(payload.encode("ascii", "surrogateescape")).hexdigest()[:32]


def _in_time(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise _OutOfTime


def item_key(url: str) -> str:
    """The key of a media item: of its payload for a data URL, else of the whole URL (vLLM
    replaces file paths in its error messages, so a ``file://`` item is found by its key)."""
    return payload_key(url.partition(",")[2] if url.startswith("data:") else url)


def _by_key(body: dict, key: str, deadline: float | None = None) -> tuple[str, str] | None:
    for name in KEYS:
        if name in body:
            for where, kind, url in _parts(name, body[name], remote=True):
                _in_time(deadline)
                if item_key(url) == key:
                    return where, kind
    return None


def _decodes(url: str, kind: str, deadline: float | None = None) -> bool:
    from PIL import Image

    head, _, payload = url.partition(",")
    if len(payload) > MAX_DECODE_BYTES:
        return True  # too large to judge here: not named (the error still reaches the client)
    try:
        if kind == "video" and head.lower().startswith(("data:video/jpeg", "data:video/png")):
            frames = payload.split(",")
        else:
            frames = [payload]
        for frame in frames:
            _in_time(deadline)
            data = base64.b64decode(frame, validate=False)
            if kind == "video" and not head.lower().startswith(("data:video/jpeg", "data:video/png")):
                return bool(data)  # a video file: only emptiness can be judged cheaply here
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.width == 0 or img.height == 0:
                    return False
        return True
    except _OutOfTime:
        raise
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


def find_bad_item(body: dict, message: str = "", deadline: float | None = None) -> tuple[str, str] | None:
    """(where, kind) of the item an error is about: the payload the connector tagged, a remote
    URL the message names, else the first data-URL media item that does not decode; None when
    none is found (or ``deadline``, a ``time.monotonic()`` value, passes first)."""
    if not isinstance(body, dict):
        return None
    try:
        tagged = KEY.search(message)
        if tagged:  # the package's media connector named the payload: no decoding needed
            found = _by_key(body, tagged.group(1), deadline)
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
                    _in_time(deadline)
                    if not _decodes(url, kind, deadline):
                        return where, kind
    except _OutOfTime:
        return None
    return None


class NameBadItemsMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
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
            status, body, extra = await self._rewrite_off_loop(start["status"], b"".join(buffered),
                                                               b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers += extra + [(b"content-length", str(len(body)).encode())]
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            await self.app(scope, tee, intercept)
        except Exception as exc:  # noqa: BLE001 - vLLM lets some input faults escape as 500s
            text = str(exc)
            if started or not (any(m.lower() in text.lower() for m in INPUT_500_MARKERS)
                               or BUSY_MARKER in text or KEY.search(text)):
                raise
            error = {"error": {"message": text, "type": "InternalServerError", "param": None,
                               "code": 500}}
            status, body, extra = await self._rewrite_off_loop(500, json.dumps(error).encode(),
                                                               b"".join(chunks))
            if status == 500:
                raise
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())] + extra})
            await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _rewrite_off_loop(self, status: int, response: bytes,
                                request: bytes) -> tuple[int, bytes, list]:
        """``_rewrite`` in a worker thread, which stops at ``NAMING_TIMEOUT_S`` (the original
        error is sent then)."""
        import asyncio

        deadline = time.monotonic() + NAMING_TIMEOUT_S
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._rewrite, status, response, request, deadline),
                NAMING_TIMEOUT_S + 1.0)
        except Exception:  # noqa: BLE001 - a timeout or a bug: the original error, unchanged
            return status, response, []

    @staticmethod
    def _rewrite(status: int, response: bytes, request: bytes,
                 deadline: float | None = None) -> tuple[int, bytes, list]:
        """(status, body, extra headers) to send: unchanged unless the error is about an input
        item (400 naming it) or the server's decode pool is full (503, retry)."""
        try:
            payload = json.loads(response)
            error = payload["error"]
            message = str(error.get("message", ""))
            if BUSY_MARKER in message:
                text = message[message.index(BUSY_MARKER) + len(BUSY_MARKER):].strip()
                error.update(code=503, type="ServiceUnavailableError", message=text)
                return 503, json.dumps(payload).encode(), [(b"retry-after", str(RETRY_AFTER_S).encode())]
            if status == 400 and TOO_LONG in message and "truncate_prompt_tokens" not in message:
                body = json.loads(request)
                rerank = isinstance(body, dict) and any(k in body for k in ("documents", "query", "queries"))
                if isinstance(body, dict) and (rerank or any(k in body for k in EMBED_KEYS)):
                    fix = PAIR_FIX if rerank else TRUNCATE_FIX
                    error["message"] = f"{message.rstrip('. ')}. {fix}"
                    return 400, json.dumps(payload).encode(), []
            if status == 400 and NOT_UNICODE in message:
                found = find_bad_text(json.loads(request))
                if found:
                    error["message"] = f"{found[0]}: {found[1]}. {UNICODE_FIX}"
                    return 400, json.dumps(payload).encode(), []
            tagged = KEY.search(message)
            markers = MEDIA_MARKERS if status == 400 else INPUT_500_MARKERS
            if not tagged and not any(m.lower() in message.lower() for m in markers):
                return status, response, []
            found = find_bad_item(json.loads(request), message, deadline)
            if found is None:  # no input to name: a 500 is a server fault and stays one
                return status, response, []
            where, kind = found
            if REMOTE_OFF_DOMAIN in message:
                text = (f"{where}: this server does not fetch media URLs (off by default). Send the "
                        f"{kind} as a data URL, or start the server with QWEN3VL_REMOTE_MEDIA=1 or "
                        "--allowed-media-domains (YAML: media.remote_fetch: true)")
            elif "local files" in message or "allowed-local-media-path" in message:
                text = (f"{where}: this server reads no local files ({message}). Send the {kind} "
                        "as a data URL, or serve with media.local_media_dir")
            else:
                if tagged:  # "item#<key>.frames[2]: problem" -> "messages[1].content[0].frames[2]"
                    rest = message[tagged.end():]
                    frame = re.match(r"^(\.frames(?:\[\d+\])?)?: ?", rest)
                    where, message = where + (frame.group(1) or ""), rest[frame.end():]
                if any(m in message for m in LIMIT_MARKERS):  # it says what to do already
                    text = f"{where}: {re.sub(r'^(https?|file)://[^ ]*: ', '', message)}"
                else:
                    text = (f"{where}: cannot {'load' if status == 500 else 'decode'} the {kind} "
                            f"({message}). {FIX}")
            error.update(code=400, type="BadRequestError", message=text)
            return 400, json.dumps(payload).encode(), []
        except Exception:  # noqa: BLE001 - never make an error response worse
            return status, response, []
