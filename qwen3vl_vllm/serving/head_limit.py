"""A bound on the bytes of a request's line and headers, under uvicorn's httptools parser.

Why: vLLM bounds the header block only for uvicorn's h11 parser (``h11_max_incomplete_event_size``,
4 MB, vLLM's fix for GHSA-rxc4-3w6r-4v47), but uvicorn serves with httptools whenever it is
installed (``uvicorn[standard]``, a vLLM dependency), and httptools grows a header value or
the URL by concatenation, without a bound. Measured on a tiny server (2 cores): one connection
streaming a 300 MB header value before any key check kept the API server at 100 % of a core
for 114 s (each new piece copies all before it) and grew it by 470 MB, and other requests
waited behind it.

So the plugin counts the bytes a connection sends while a request's headers are incomplete,
and past ``QWEN3VL_MAX_HEADER_BYTES`` (default 64 KiB; ``0`` for none) answers 431 and closes
the connection. 64 KiB is twice what nginx reads by default (4 buffers of 8 KiB) and four
times Node's limit, so a request a proxy passed is never refused. Installed on
``HttpToolsProtocol`` in the API server processes of a detected checkpoint; with h11, vLLM's
own bound applies.

Example::

    from qwen3vl_vllm.serving.head_limit import patch
    patch(65536)   # -> "HttpToolsProtocol.data_received" (None: already, or no httptools)
"""

from __future__ import annotations

import json
import logging

from qwen3vl_vllm.serving.request_limits import env_limit

logger = logging.getLogger("vllm.qwen3vl_vllm")
HEADER_ENV = "QWEN3VL_MAX_HEADER_BYTES"
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
_SENTINEL = "_qwen3vl_vllm_head_limit"


def max_header_bytes(environ=None) -> int:
    """The bound in force: ``QWEN3VL_MAX_HEADER_BYTES``, else the default; 0 = none."""
    return env_limit(environ, HEADER_ENV, DEFAULT_MAX_HEADER_BYTES, "bytes")


def too_large_response(limit: int) -> bytes:
    """The whole 431 response (the app never sees the request: it has no headers yet)."""
    body = json.dumps({"error": {
        "message": f"request line and headers: over this server's limit of {limit} bytes. Send "
                   f"shorter headers and URLs (the request's content belongs in its body), or "
                   f"raise {HEADER_ENV}",
        "type": "RequestHeaderFieldsTooLargeError", "param": None, "code": 431}}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def installed() -> bool:
    """Whether this process's httptools protocol is bounded."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return False
    return bool(getattr(HttpToolsProtocol, _SENTINEL, False))


def patch(limit: int) -> str | None:
    """Bound ``HttpToolsProtocol``'s header bytes at ``limit`` (once per process); returns what
    was patched, or None (already, no limit, or no httptools)."""
    if not limit:
        return None
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11, which vLLM bounds
        return None
    if getattr(HttpToolsProtocol, _SENTINEL, False):
        return None
    data_received = HttpToolsProtocol.data_received
    on_headers_complete = HttpToolsProtocol.on_headers_complete
    on_message_complete = HttpToolsProtocol.on_message_complete
    response = too_large_response(limit)

    def bounded_data_received(self, data: bytes) -> None:
        if self._qwen3vl_head_done:
            data_received(self, data)
            return
        self._qwen3vl_head_bytes += len(data)
        data_received(self, data)  # at most one piece past the limit is parsed
        if (not self._qwen3vl_head_done and self._qwen3vl_head_bytes > limit
                and not self.transport.is_closing()):
            logger.warning("qwen3vl-vllm: a request's line and headers went over %d bytes: 431, "
                           "connection closed (%s)", limit, HEADER_ENV)
            self.transport.write(response)
            self.transport.close()

    def headers_complete(self) -> None:
        self._qwen3vl_head_done = True
        on_headers_complete(self)

    def message_complete(self) -> None:
        self._qwen3vl_head_done, self._qwen3vl_head_bytes = False, 0  # the next request's head
        on_message_complete(self)

    HttpToolsProtocol._qwen3vl_head_done = False
    HttpToolsProtocol._qwen3vl_head_bytes = 0
    HttpToolsProtocol.data_received = bounded_data_received
    HttpToolsProtocol.on_headers_complete = headers_complete
    HttpToolsProtocol.on_message_complete = message_complete
    setattr(HttpToolsProtocol, _SENTINEL, True)
    return "HttpToolsProtocol.data_received"
