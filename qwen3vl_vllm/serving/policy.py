"""ASGI middleware: the server-side limits vLLM has no flag for, at no cost on the hot path.

- ``QWEN3VL_MAX_BODY_BYTES`` (default 64 MiB, ``0`` for no limit): a request whose body is
  larger gets 413. Checked from the ``content-length`` header, and counted while the body
  streams in when there is none.
- The limits of ``request_limits`` (each ``0`` for none): at most 2,048 items in any list
  (``QWEN3VL_MAX_ITEMS_PER_REQUEST``), 4 Mi characters in one text
  (``QWEN3VL_MAX_TEXT_CHARS``) and 16 Mi characters of text in one request, a scoring
  request's query counted once per document (``QWEN3VL_MAX_REQUEST_TEXT_CHARS``). A request
  over one gets 400 naming the field and the fix. Counted from the JSON, on any path, before
  vLLM parses it; a body too small to go over any of them (2 bytes an item at the least) is not
  read here at all, so short requests pay nothing. A larger one is read into one buffer and
  parsed once more (``json.loads``: ~40 µs for a 512² photo's 45 KB body, ~0.26 ms for a
  screenshot's 212 KB), then handed to vLLM as it came.
- ``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT`` (default 512 MiB, ``0`` for none, ``body_pool``): the
  bodies of all requests in flight together; a request that would go over waits before its
  body is read, then gets 503 with ``Retry-After``.
- ``/rerank`` and ``/score`` requests that vLLM would answer oddly get 400: an empty query (it
  would score "NULL"), no documents, or ``top_n`` beyond the documents (vLLM silently returns
  fewer). Only these paths (and SageMaker's ``/invocations``, which dispatches to them by the
  body's shape) are buffered, to read the JSON.
- Every POST is served inside its own decode budget (``budget.serving``): what its media may
  decode, for how long, and its share of what the process may hold; released when it ends.

Media policy is vLLM's own: ``--allowed-local-media-path`` for ``file://`` (symlinks and ``..``
resolved) and ``--allowed-media-domains`` for URLs (``qwen3vl-vllm serve`` passes a domain that
cannot exist when ``media.remote_fetch`` is off). Where vLLM answers those with a 500, the
``server_errors`` middleware turns it into a 400 naming the item.
"""

from __future__ import annotations

import json
import math

from qwen3vl_vllm.serving.body_pool import RETRY_AFTER_S, BodyPool, in_flight_limit
from qwen3vl_vllm.serving.request_limits import (DOC_FIELDS, QUERY_FIELDS, env_limit, items_problem,
                                                  max_items, max_request_text_chars, max_text_chars,
                                                  text_problem)

RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score")
INVOCATIONS = "/invocations"  # SageMaker: any request type, dispatched by the body's shape
MAX_BODY_ENV = "QWEN3VL_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # on by default, for plain `vllm serve` too


def max_body_bytes(environ=None) -> int:
    """The body limit in force: ``QWEN3VL_MAX_BODY_BYTES``, else the default; 0 = none."""
    return env_limit(environ, MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES, "bytes")


def min_body_to_read(items: int, text: int, total: int) -> int | None:
    """The smallest body (bytes) that could go over one of the request limits (0 = off), or
    None when all are off. An item takes 2 bytes at the least ("0," or "a,"); a text of n
    characters n bytes; a query of q bytes paired with d documents of 3 bytes ('"",') fits in
    q + 3d bytes and makes q x d characters, at most (bytes / 2)^2 / 3; other texts take a byte
    a character at the least."""
    bounds = [2 * items if items else None, text or None,
              min(total, math.isqrt(12 * total)) if total else None]
    bounds = [b for b in bounds if b is not None]
    return min(bounds) if bounds else None


def _error(status: int, message: str) -> bytes:
    kind = {400: "BadRequestError", 413: "RequestTooLargeError", 503: "ServiceUnavailableError"}.get(status, "Error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


async def _reply(send, status: int, message: str, retry_after: int | None = None) -> None:
    body = _error(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


TOO_DEEP = ("request body: JSON nested too deeply to read (Python's parser stops at ~1,000 "
            "levels). Send a request whose lists and objects are nested a few levels deep")


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None  # vLLM's own validation answers
    except RecursionError:
        return TOO_DEEP


def rerank_problem(data) -> str | None:
    """The 400 message for a rerank/score body (parsed JSON) vLLM would answer oddly, else None."""
    if not isinstance(data, dict):
        return None
    query = next((data[f] for f in QUERY_FIELDS if f in data), None)
    # "" is an empty text part, as the reference scores {"text": ""}; only a query with no
    # content at all would score nothing in the reference
    if query == [] or (isinstance(query, dict) and not query.get("content")):
        return "query: empty. Give the query a text, image or video (\"\" is an empty text)"
    docs = next((data[f] for f in DOC_FIELDS if f in data), None)
    if isinstance(docs, list) and not docs:
        return "documents: empty list. Give at least one document"
    top_n = data.get("top_n")
    n = len(docs) if isinstance(docs, list) else 1
    if isinstance(top_n, int) and not isinstance(top_n, bool) and (top_n < 0 or top_n > n):
        return (f"top_n: {top_n} is out of range for {n} document(s). Use 1..{n}, or leave it "
                "out (or 0) for all")
    return None


class PolicyMiddleware:
    def __init__(self, app):
        from qwen3vl_vllm.media import budget

        self.app = app
        self.max_body = max_body_bytes()
        self.max_items = max_items()
        self.max_text = max_text_chars()
        self.max_request_text = max_request_text_chars()
        self.read_from = min_body_to_read(self.max_items, self.max_text, self.max_request_text)
        self.bodies = BodyPool(in_flight_limit())
        self.decode_limits = budget.limits()

    def _too_large(self, size: int) -> str:
        return (f"request body is {size} bytes or more, above this server's limit of {self.max_body}. "
                "Send fewer or smaller items per request")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        from qwen3vl_vllm.media import budget

        with budget.serving(self.decode_limits):
            await self._post(scope, receive, send)

    async def _post(self, scope, receive, send):
        length = None
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                length = int(value)
        if self.max_body and length is not None and length > self.max_body:
            await _reply(send, 413, self._too_large(length))
            return
        held = [0]  # bytes this request holds in the process's body pool, released at its end
        if length:
            if not await self.bodies.acquire(length):
                await _reply(send, 503, self.bodies.busy_message(length), retry_after=RETRY_AFTER_S)
                return
            held[0] = length
        try:
            await self._read_and_serve(scope, receive, send, length, held)
        finally:
            self.bodies.release(held[0])

    def _hold_chunk(self, held: list, n: int) -> bool:
        """Count a chunk of a body sent without a length; False when the pool is full."""
        if not self.bodies.try_add(n):
            return False
        held[0] += n
        return True

    async def _read_and_serve(self, scope, receive, send, length, held):
        checked = scope.get("path") in RERANK_PATHS or scope.get("path") == INVOCATIONS
        # a body too short to go over a request limit is passed on unread
        count = self.read_from is not None and (length is None or length > self.read_from)
        if checked or count:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if self.max_body and size > self.max_body:
                    await _reply(send, 413, self._too_large(size))
                    return
                if length is None and not self._hold_chunk(held, len(chunks[-1])):
                    await _reply(send, 503, self.bodies.busy_message(size), retry_after=RETRY_AFTER_S)
                    return
                more = message.get("more_body", False)
            body = b"".join(chunks)
            data = _json(body)
            if data is TOO_DEEP:
                problem = TOO_DEEP
            else:
                problem = (rerank_problem(data) if checked else None) or \
                    (items_problem(data, self.max_items) if self.max_items else None) or \
                    text_problem(data, max_text=self.max_text, max_total=self.max_request_text)
            if problem:
                await _reply(send, 400, problem)
                return
            done = False

            async def replay():
                nonlocal done
                if not done:
                    done = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        if not self.max_body:
            await self.app(scope, receive, send)
            return
        # count while the app reads; stop feeding it past the limit (or, with no content-length,
        # past the room in the body pool)
        state = {"size": 0, "over": False, "busy": False, "started": False}

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                state["size"] += n
                if state["size"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
                if length is None and not self._hold_chunk(held, n):
                    state["busy"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not (state["over"] or state["busy"]):
                raise
        if state["over"] and not state["started"]:
            await _reply(send, 413, self._too_large(state["size"]))
        elif state["busy"] and not state["started"]:
            await _reply(send, 503, self.bodies.busy_message(state["size"]), retry_after=RETRY_AFTER_S)
