"""The bound on a request's line and headers under uvicorn's httptools parser (``head_limit``),
driven through uvicorn's own protocol with a fake transport."""

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
    """A fresh HttpToolsProtocol class state, bounded at 1,000 bytes, restored afterwards."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from qwen3vl_vllm.serving import head_limit

    cls = httptools_impl.HttpToolsProtocol
    for name in ("data_received", "on_headers_complete", "on_message_complete"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(cls, head_limit._SENTINEL, False, raising=False)
    assert head_limit.patch(1000) == "HttpToolsProtocol.data_received" and head_limit.installed()
    assert head_limit.patch(1000) is None  # once per process

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def make():
        config = Config(app=app, http="httptools", log_level="error")
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
