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
  bodies of all requests in flight together, charged as their bytes arrive; a request whose
  next chunk would go over waits, then gets 503 with ``Retry-After``.
- ``QWEN3VL_BODY_TIMEOUT_S`` (default 60, ``0`` for none, ``body_pool``): how long the server
  waits on a client for one body, in all; then 408.
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

import asyncio
import json
import math
import time

from qwen3vl_vllm.serving.body_pool import (RETRY_AFTER_S, BodyPool, body_timeout_s, in_flight_limit,
                                            timeout_message)
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
    kind = {400: "BadRequestError", 408: "RequestTimeoutError", 413: "RequestTooLargeError",
            503: "ServiceUnavailableError"}.get(status, "Error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


async def _reply(send, status: int, message: str, retry_after: int | None = None) -> None:
    body = _error(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 408:  # a client too slow to finish its body gets no more of this connection
        headers.append((b"connection", b"close"))
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
        self.body_timeout = body_timeout_s()
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
        body = _Body(self, receive, length)
        try:
            await self._read_and_serve(scope, body, send, length)
        finally:
            self.bodies.release(body.share)

    async def _refuse(self, send, body: "_Body") -> None:
        status, message, retry_after = body.problem
        await _reply(send, status, message, retry_after=retry_after)

    async def _read_and_serve(self, scope, body: "_Body", send, length):
        checked = scope.get("path") in RERANK_PATHS or scope.get("path") == INVOCATIONS
        # a body too short to go over a request limit is passed on unread
        count = self.read_from is not None and (length is None or length > self.read_from)
        if checked or count:
            chunks, more = [], True
            while more:
                message = await body.receive()
                if body.problem:
                    await self._refuse(send, body)
                    return
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            whole = b"".join(chunks)
            data = _json(whole)
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
                    return {"type": "http.request", "body": whole, "more_body": False}
                return await body.receive()

            await self.app(scope, replay, send)
            return
        # the app reads the body through the checks; one that fails them ends its reading (a
        # disconnect) and gets its answer here: the app's answer to that disconnect (FastAPI:
        # 400 "There was an error parsing the body") is dropped, unless it had begun before
        started = False

        async def tracked(message):
            nonlocal started
            if body.problem and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, tracked)
        except Exception:
            if not body.problem:
                raise
        if body.problem and not started:
            await self._refuse(send, body)


class _Body:
    """One request's body as it arrives: counted against the body limit, charged chunk by chunk
    to the process's body pool, and waited for at most the body timeout. ``receive`` stands in
    for the ASGI one; when a check fails it records ``problem`` (status, message, Retry-After)
    and tells the app the client has gone, so the app stops reading and the middleware answers."""

    def __init__(self, policy: "PolicyMiddleware", receive, length: int | None):
        self.policy, self._receive, self.length = policy, receive, length
        self.size = 0  # bytes received
        self.share = policy.bodies.share()  # bytes charged to the pool, released when it ends
        self.waited = 0.0  # seconds spent waiting on the client for the body
        self.complete = False
        self.problem: tuple[int, str, int | None] | None = None

    async def receive(self):
        if self.problem:
            return {"type": "http.disconnect"}
        if self.complete:  # the body is in: what follows is the client going away
            return await self._receive()
        policy = self.policy
        timeout = policy.body_timeout
        t0 = time.monotonic()
        try:
            if timeout:
                message = await asyncio.wait_for(self._receive(), max(timeout - self.waited, 0.001))
            else:
                message = await self._receive()
        except asyncio.TimeoutError:
            self.problem = (408, timeout_message(timeout, self.size, self.length), None)
            return {"type": "http.disconnect"}
        self.waited += time.monotonic() - t0
        if message["type"] != "http.request":
            return message
        n = len(message.get("body", b""))
        self.size += n
        if policy.max_body and self.size > policy.max_body:
            self.problem = (413, policy._too_large(self.size), None)
            return {"type": "http.disconnect"}
        if n and not await policy.bodies.acquire(n, self.share):
            self.problem = (503, policy.bodies.busy_message(self.size), RETRY_AFTER_S)
            return {"type": "http.disconnect"}
        self.complete = not message.get("more_body", False)
        return message
