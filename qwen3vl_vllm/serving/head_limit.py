"""Bounds on a request's line and headers under uvicorn's httptools parser: bytes and time.

Why: vLLM bounds the header block only for uvicorn's h11 parser (``h11_max_incomplete_event_size``,
4 MB, vLLM's fix for GHSA-rxc4-3w6r-4v47), but uvicorn serves with httptools whenever it is
installed (``uvicorn[standard]``, a vLLM dependency), and httptools grows a header value or
the URL by concatenation, without a bound. Measured on a tiny server (2 cores): one connection
streaming a 300 MB header value before any key check kept the API server at 100 % of a core
for 114 s (each new piece copies all before it) and grew it by 470 MB, and other requests
waited behind it. Neither parser has a time limit on headers: a connection that sends a header
line now and then, or nothing at all, is held open for ever (Slowloris), each one a file
descriptor the server runs out of.

So the plugin
- counts the bytes a connection sends while a request's headers are incomplete, and past
  ``QWEN3VL_MAX_HEADER_BYTES`` (default 64 KiB; ``0`` for none) answers 431 and closes the
  connection. 64 KiB is twice what nginx reads by default (4 buffers of 8 KiB) and four times
  Node's limit, so a request a proxy passed is never refused;
- gives a request ``QWEN3VL_HEADER_TIMEOUT_S`` (default 30 s; ``0`` for none) from its first
  byte to the end of its headers, then answers 408 and closes (nginx and Node allow 60 s; no
  client takes seconds to send a few hundred bytes of headers), and closes a new connection
  that sends nothing within uvicorn's keep-alive time, as uvicorn closes an idle one after a
  response.

Installed on ``HttpToolsProtocol`` in the API server processes of a detected checkpoint; with
h11, vLLM's own byte bound applies (and no time bound).

Example::

    from qwen3vl_vllm.serving.head_limit import patch
    patch(65536, 30)   # -> "HttpToolsProtocol.data_received" (None: already, or no httptools)
"""

from __future__ import annotations

import json
import logging

from qwen3vl_vllm.serving.request_limits import env_limit

logger = logging.getLogger("vllm.qwen3vl_vllm")
HEADER_ENV = "QWEN3VL_MAX_HEADER_BYTES"
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
TIMEOUT_ENV = "QWEN3VL_HEADER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30
_SENTINEL = "_qwen3vl_vllm_head_limit"


def max_header_bytes(environ=None) -> int:
    """The bound in force: ``QWEN3VL_MAX_HEADER_BYTES``, else the default; 0 = none."""
    return env_limit(environ, HEADER_ENV, DEFAULT_MAX_HEADER_BYTES, "bytes")


def header_timeout_s(environ=None) -> int:
    """Seconds from a request's first byte to the end of its headers: ``QWEN3VL_HEADER_TIMEOUT_S``,
    else the default; 0 = none."""
    return env_limit(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S, "seconds")


def _response(status: int, reason: str, kind: str, message: str) -> bytes:
    """A whole response, sent before the app is called (the request has no headers yet)."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n".encode()
            + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def too_large_response(limit: int) -> bytes:
    return _response(431, "Request Header Fields Too Large", "RequestHeaderFieldsTooLargeError",
                     f"request line and headers: over this server's limit of {limit} bytes. Send "
                     f"shorter headers and URLs (the request's content belongs in its body), or "
                     f"raise {HEADER_ENV}")


def timeout_response(timeout_s: int) -> bytes:
    return _response(408, "Request Timeout", "RequestTimeoutError",
                     f"request line and headers: not complete {timeout_s} s after their first byte "
                     f"({TIMEOUT_ENV}). Send the headers at once, or raise the limit")


def installed() -> bool:
    """Whether this process's httptools protocol is bounded."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return False
    return bool(getattr(HttpToolsProtocol, _SENTINEL, False))


def patch(limit: int, timeout_s: int = 0) -> str | None:
    """Bound ``HttpToolsProtocol``'s header bytes at ``limit`` and its header time at
    ``timeout_s`` (0: none; once per process); returns what was patched, or None (already,
    nothing to bound, or no httptools)."""
    if not limit and not timeout_s:
        return None
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn uses h11, which vLLM bounds
        return None
    if getattr(HttpToolsProtocol, _SENTINEL, False):
        return None
    connection_made = HttpToolsProtocol.connection_made
    connection_lost = HttpToolsProtocol.connection_lost
    data_received = HttpToolsProtocol.data_received
    on_headers_complete = HttpToolsProtocol.on_headers_complete
    on_message_complete = HttpToolsProtocol.on_message_complete
    too_large, too_slow = too_large_response(limit), timeout_response(timeout_s)

    def _refuse(self, response: bytes | None, why: str) -> None:
        if self.transport.is_closing():
            return
        # a bad request is logged as uvicorn logs one it cannot parse; an idle connection is not
        logger.log(logging.WARNING if response else logging.DEBUG, "qwen3vl-vllm: %s: connection closed", why)
        if response:
            self.transport.write(response)
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        if self._qwen3vl_head_timer is not None:
            self._qwen3vl_head_timer.cancel()
        self._qwen3vl_head_timer = self.loop.call_later(seconds, _expired, self) if seconds else None

    def _expired(self) -> None:
        self._qwen3vl_head_timer = None
        if not self._qwen3vl_head_done:
            if self._qwen3vl_head_bytes:
                _refuse(self, too_slow, f"a request's headers took over {timeout_s} s ({TIMEOUT_ENV}), 408")
            else:  # a connection that never sent a byte, as uvicorn closes an idle one
                _refuse(self, None, f"no request within {self.timeout_keep_alive} s")

    def bounded_connection_made(self, transport) -> None:
        connection_made(self, transport)
        if timeout_s:
            _arm(self, self.timeout_keep_alive)

    def bounded_connection_lost(self, exc) -> None:
        if self._qwen3vl_head_timer is not None:
            self._qwen3vl_head_timer.cancel()
            self._qwen3vl_head_timer = None
        connection_lost(self, exc)

    def bounded_data_received(self, data: bytes) -> None:
        if self._qwen3vl_head_done:
            data_received(self, data)
            return
        if timeout_s and not self._qwen3vl_head_bytes:
            _arm(self, timeout_s)  # a request's first byte: its headers are due
        self._qwen3vl_head_bytes += len(data)
        data_received(self, data)  # at most one piece past the limit is parsed
        if limit and not self._qwen3vl_head_done and self._qwen3vl_head_bytes > limit:
            _refuse(self, too_large, f"a request's line and headers went over {limit} bytes ({HEADER_ENV}), 431")

    def headers_complete(self) -> None:
        self._qwen3vl_head_done = True
        if self._qwen3vl_head_timer is not None:
            self._qwen3vl_head_timer.cancel()
            self._qwen3vl_head_timer = None
        on_headers_complete(self)

    def message_complete(self) -> None:
        self._qwen3vl_head_done, self._qwen3vl_head_bytes = False, 0  # the next request's head
        on_message_complete(self)

    HttpToolsProtocol._qwen3vl_head_done = False
    HttpToolsProtocol._qwen3vl_head_bytes = 0
    HttpToolsProtocol._qwen3vl_head_timer = None
    HttpToolsProtocol.connection_made = bounded_connection_made
    HttpToolsProtocol.connection_lost = bounded_connection_lost
    HttpToolsProtocol.data_received = bounded_data_received
    HttpToolsProtocol.on_headers_complete = headers_complete
    HttpToolsProtocol.on_message_complete = message_complete
    setattr(HttpToolsProtocol, _SENTINEL, True)
    return "HttpToolsProtocol.data_received"
