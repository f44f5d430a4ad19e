"""ASGI middleware: the server-side limits vLLM has no flag for.

- ``QWEN3VL_MAX_BODY_BYTES``: requests with a larger body get 413 (before vLLM parses them);
- ``QWEN3VL_REMOTE_MEDIA=0``: media given as http(s) URLs get 400 (no server-side fetch).
  vLLM's ``--allowed-media-domains`` then narrows what is allowed when fetching is on.
- ``QWEN3VL_LOCAL_MEDIA_DIR``: ``file://`` media must resolve (symlinks and ``..`` included)
  inside this folder; unset or empty: no local files at all. vLLM enforces
  ``--allowed-local-media-path`` too, but answers 500 on some endpoints (``/rerank``); this
  answers 400 with the item's URL everywhere.

Set by ``qwen3vl-vllm serve`` from the config (``server.max_request_bytes``,
``media.remote_fetch``, ``media.local_media_dir``) and, for a plain ``vllm serve``, by the plugin
(local folder from ``--allowed-local-media-path``).
"""

from __future__ import annotations

import json
import os
import re

_URL = re.compile(rb'"url"\s*:\s*"https?://')
_FILE = re.compile(rb'"url"\s*:\s*"(file://(?:[^"\\]|\\.)*)"')


def _error(status: int, message: str) -> bytes:
    kind = {400: "BadRequestError", 413: "RequestTooLargeError"}.get(status, "Error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def _url_path(raw: bytes) -> str:
    url = json.loads(b'"' + raw + b'"')
    return url[len("file://"):]


class PolicyMiddleware:
    def __init__(self, app):
        self.app = app
        self.max_body = int(os.environ.get("QWEN3VL_MAX_BODY_BYTES", "0") or 0)
        self.remote = os.environ.get("QWEN3VL_REMOTE_MEDIA", "1") != "0"
        local = os.environ.get("QWEN3VL_LOCAL_MEDIA_DIR", "")
        self.local_root = os.path.realpath(local) if local else None

    async def _reply(self, send, status: int, message: str):
        body = _error(status, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and self.max_body and value.isdigit() and int(value) > self.max_body:
                await self._reply(send, 413, f"request body is {int(value)} bytes, above this server's "
                                  f"limit of {self.max_body}. Send fewer or smaller items per request")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.max_body and size > self.max_body:
                await self._reply(send, 413, f"request body exceeds this server's limit of "
                                  f"{self.max_body} bytes. Send fewer or smaller items per request")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not self.remote and _URL.search(body):
            await self._reply(send, 400, "media URLs (http/https) are not fetched by this server "
                              "(media.remote_fetch is off). Send the image or video as a data URL")
            return
        problem = self._local_file_problem(body) or self._rerank_problem(scope.get("path", ""), body)
        if problem:
            await self._reply(send, 400, problem)
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _local_file_problem(self, body: bytes) -> str | None:
        if b"file://" not in body:
            return None
        for match in _FILE.finditer(body):
            try:
                path = _url_path(match.group(1))
            except ValueError:
                return "malformed file:// URL"
            if self.local_root is None:
                return (f"file://{path}: this server reads no local files (no allowed folder "
                        "configured). Send the image or video as a data URL")
            real = os.path.realpath(path)
            if os.path.commonpath([self.local_root, real]) != self.local_root:
                return (f"file://{path}: outside the allowed folder {self.local_root} (after "
                        "resolving links and '..'). Move it there or send a data URL")
        return None

    @staticmethod
    def _rerank_problem(path: str, body: bytes) -> str | None:
        """Requests vLLM would answer oddly: an empty query (it would score "NULL"), no
        documents, or ``top_n`` beyond the documents (vLLM silently returns fewer)."""
        if not path.endswith(("/rerank", "/score")):
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None  # vLLM's own validation answers
        if not isinstance(data, dict):
            return None
        query = data.get("query", data.get("queries", data.get("text_1")))
        if query in ("", []) or (isinstance(query, dict) and not query.get("content")):
            return "query: empty. Give the query a text, image or video"
        docs = data.get("documents", data.get("items", data.get("text_2")))
        if isinstance(docs, list) and not docs:
            return "documents: empty list. Give at least one document"
        top_n = data.get("top_n")
        n = len(docs) if isinstance(docs, list) else 1
        if isinstance(top_n, int) and not isinstance(top_n, bool) and (top_n < 0 or top_n > n):
            return (f"top_n: {top_n} is out of range for {n} document(s). Use 1..{n}, or leave it "
                    "out (or 0) for all")
        return None
