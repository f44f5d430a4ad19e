"""The bounds on a request's line and headers under uvicorn's httptools parser (``head_limit``):
bytes and time, driven through uvicorn's own protocol with a fake transport."""

from __future__ import annotations

import asyncio
import json

import pytest

httptools_impl = pytest.importorskip("uvicorn.protocols.http.httptools_impl",
                                     reason="uvicorn without httptools: h11, which vLLM bounds")


class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.written, self.closed = b"", False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


@pytest.fixture
def protocol(monkeypatch):
    """A fresh HttpToolsProtocol class state, bounded at 1,000 bytes and 1 s of headers (1 s of
    keep-alive), restored afterwards."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from qwen3vl_vllm.serving import head_limit

    cls = httptools_impl.HttpToolsProtocol
    for name in ("connection_made", "connection_lost", "data_received", "on_headers_complete",
                 "on_message_complete"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(cls, head_limit._SENTINEL, False, raising=False)
    assert head_limit.patch(1000, 1) == "HttpToolsProtocol.data_received" and head_limit.installed()
    assert head_limit.patch(1000, 1) is None  # once per process

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        while (await receive()).get("more_body"):  # the whole body, then the answer
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def make():
        config = Config(app=app, http="httptools", log_level="error", timeout_keep_alive=1)
        config.load()
        loop = asyncio.new_event_loop()
        proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = _Transport()
        proto.connection_made(transport)
        return proto, transport, loop

    yield make, seen


def _run_tasks(loop):
    loop.run_until_complete(asyncio.sleep(0.01))


def test_a_head_over_the_bound_gets_431_and_the_connection_closes(protocol):
    make, seen = protocol
    proto, transport, loop = make()
    proto.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(5):                       # streamed in pieces, never ending
        if transport.closed:
            break
        proto.data_received(b"a" * 400)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    body = json.loads(transport.written.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["message"] == ("request line and headers: over this server's limit of 1000 "
                                        "bytes. Send shorter headers and URLs (the request's content "
                                        "belongs in its body), or raise QWEN3VL_MAX_HEADER_BYTES")
    assert seen == []                        # the app never saw it
    loop.close()


def test_a_long_url_counts_too(protocol):
    make, seen = protocol
    proto, transport, loop = make()
    proto.data_received(b"GET /health?" + b"q" * 1200)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 431")
    loop.close()


def test_heads_under_the_bound_and_bodies_of_any_size_pass(protocol):
    """A 900-byte head passes; a 5,000-byte body does not count; on a kept-alive connection the
    next request's head is counted from zero."""
    make, seen = protocol
    proto, transport, loop = make()
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 880 + b"\r\nContent-Length: 5000\r\n\r\n"
    assert 900 < len(head) < 1000
    proto.data_received(head)
    for _ in range(5):
        proto.data_received(b"b" * 1000)
    _run_tasks(loop)
    for _ in range(3):                       # three more heads of 900+ bytes on the same connection
        proto.data_received(b"GET /b HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 860 + b"\r\n\r\n")
        _run_tasks(loop)
    assert not transport.closed, transport.written[:200]
    assert seen == ["/a", "/b", "/b", "/b"]
    assert transport.written.count(b"HTTP/1.1 200 OK") == 4
    loop.close()


def _wait(loop, seconds):
    loop.run_until_complete(asyncio.sleep(seconds))


def test_headers_that_take_too_long_get_408(protocol):
    """A head that began and did not end within 1 s: 408 and closed, at the timeout, not before."""
    make, seen = protocol
    proto, transport, loop = make()
    proto.data_received(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
    _wait(loop, 0.5)
    proto.data_received(b"X-Slow: 1\r\n")     # a header line now and then does not reset it
    assert not transport.closed
    _wait(loop, 0.7)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(transport.written.split(b"\r\n\r\n", 1)[1])["error"]["message"] == (
        "request line and headers: not complete 1 s after their first byte "
        "(QWEN3VL_HEADER_TIMEOUT_S). Send the headers at once, or raise the limit")
    assert seen == []
    loop.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_time(protocol):
    make, _ = protocol
    proto, transport, loop = make()
    _wait(loop, 0.5)
    assert not transport.closed
    _wait(loop, 0.7)
    assert transport.closed and transport.written == b""   # nothing to answer
    loop.close()


def test_the_timer_stops_at_the_end_of_the_headers(protocol):
    """Headers in time, then a body that takes longer than the header timeout (the body's own
    timeout is the middleware's): served; a second request on the connection gets its own 1 s."""
    make, seen = protocol
    proto, transport, loop = make()
    proto.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    _wait(loop, 1.3)
    proto.data_received(b"cd")
    _wait(loop, 0.05)
    assert not transport.closed and seen == ["/a"]
    proto.data_received(b"GET /b HTTP/1.1\r\n")
    _wait(loop, 0.5)
    proto.data_received(b"Host: x\r\n\r\n")
    _wait(loop, 0.8)                          # past 1 s since /b began, but its head was done
    assert seen == ["/a", "/b"] and transport.written.count(b"HTTP/1.1 200 OK") == 2
    proto.connection_lost(None)               # the timers go with the connection
    assert proto._qwen3vl_head_timer is None
    loop.close()
