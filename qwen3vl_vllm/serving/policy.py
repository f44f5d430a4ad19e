"""ASGI middleware: the server-side limits vLLM has no flag for, at no cost on the hot path.

- ``QWEN3VL_MAX_BODY_BYTES`` (default 64 MiB, ``0`` for no limit): a request whose body is
  larger gets 413. Checked from the ``content-length`` header, and counted while the body
  streams in when there is none; the body is never copied.
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
import os

RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score")
INVOCATIONS = "/invocations"  # SageMaker: any request type, dispatched by the body's shape
MAX_BODY_ENV = "QWEN3VL_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # on by default, for plain `vllm serve` too


def max_body_bytes(environ=None) -> int:
    """The body limit in force: ``QWEN3VL_MAX_BODY_BYTES``, else the default; 0 = none."""
    raw = (os.environ if environ is None else environ).get(MAX_BODY_ENV, "").strip()
    return DEFAULT_MAX_BODY_BYTES if raw == "" else int(raw)


def _error(status: int, message: str) -> bytes:
    kind = {400: "BadRequestError", 413: "RequestTooLargeError"}.get(status, "Error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


async def _reply(send, status: int, message: str) -> None:
    body = _error(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def rerank_problem(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None  # vLLM's own validation answers
    if not isinstance(data, dict):
        return None
    query = data.get("query", data.get("queries", data.get("text_1")))
    # "" is an empty text part, as the reference scores {"text": ""}; only a query with no
    # content at all would score nothing in the reference
    if query == [] or (isinstance(query, dict) and not query.get("content")):
        return "query: empty. Give the query a text, image or video (\"\" is an empty text)"
    docs = data.get("documents", data.get("items", data.get("text_2")))
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
        if self.max_body:
            for name, value in scope.get("headers", []):
                if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                    await _reply(send, 413, self._too_large(int(value)))
                    return
        if scope.get("path") in RERANK_PATHS or scope.get("path") == INVOCATIONS:
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
                more = message.get("more_body", False)
            body = b"".join(chunks)
            problem = rerank_problem(body)
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
        # no content-length: count while the app reads; stop feeding it past the limit
        state = {"size": 0, "over": False, "started": False}

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
                if state["size"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _reply(send, 413, self._too_large(state["size"]))
