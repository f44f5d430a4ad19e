"""The request bodies a server process holds at once (``serving.body_pool``) and the policy
middleware that charges them as they arrive: what waits, what gets 503, what always goes
through, and a body that keeps the server waiting (408)."""

from __future__ import annotations

import asyncio
import json

import pytest

from qwen3vl_vllm.serving.body_pool import BodyPool, body_timeout_s, in_flight_limit


def test_the_settings():
    assert in_flight_limit({}) == 512 * 1024 ** 2
    assert in_flight_limit({"QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT": "0"}) == 0
    assert body_timeout_s({}) == 60 and body_timeout_s({"QWEN3VL_BODY_TIMEOUT_S": "0"}) == 0
    for bad in ("-1", "1GiB"):
        with pytest.raises(ValueError, match="QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT"):
            in_flight_limit({"QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT": bad})
    with pytest.raises(ValueError, match="QWEN3VL_BODY_TIMEOUT_S='1.5'"):
        body_timeout_s({"QWEN3VL_BODY_TIMEOUT_S": "1.5"})


def test_the_pool_waits_then_refuses():
    async def scenario():
        pool = BodyPool(limit=1000, wait_s=0.3)
        a, b = pool.share(), pool.share()
        assert await pool.acquire(600, a) and pool.held == a.held == 600
        assert not await pool.acquire(500, b) and pool.held == 600 and b.held == 0  # waited: no room
        waiter = asyncio.ensure_future(pool.acquire(500, b))
        await asyncio.sleep(0.05)
        pool.release(a)                                                # room while it waits
        assert await waiter and pool.held == b.held == 500 and a.held == 0
        c = pool.share()
        assert await pool.acquire(500, c) and pool.held == 1000        # exactly at the limit
        assert not await pool.acquire(1, b)                            # another holds 500
        pool.release(b)
        pool.release(c)
        assert await pool.acquire(5000, a) and pool.held == 5000       # alone: always goes through
        assert await pool.acquire(5000, a) and pool.held == a.held == 10000  # still alone
        off = BodyPool(limit=0)
        assert await off.acquire(10 ** 12) and await off.acquire(10 ** 12)

    asyncio.run(scenario())


def test_room_goes_to_waiters_in_order():
    """A waiter that needs little does not pass one that came before it and needs more."""
    async def scenario():
        pool = BodyPool(limit=1000, wait_s=2.0)
        served, first, big, small = pool.share(), pool.share(), pool.share(), pool.share()
        assert await pool.acquire(900, served)
        order = []

        async def want(share, n, name):
            assert await pool.acquire(n, share)
            order.append(name)

        waiting = [asyncio.ensure_future(want(big, 600, "big")), asyncio.ensure_future(want(small, 50, "small"))]
        await asyncio.sleep(0.1)
        assert order == [] and pool.held == 900      # 50 would fit, but "big" is first in line
        pool.release(served)
        await asyncio.gather(*waiting)
        assert order == ["big", "small"] and pool.held == 650

    asyncio.run(scenario())


def test_a_full_pool_of_half_bodies_lets_the_first_finish():
    """Three uploads each hold 300 of a 1,000-byte pool and each needs 300 more: the first in
    line gets its room from the latest (which gives up at once: 503), not after the waits run
    out; the second keeps its bytes and waits on."""
    async def scenario():
        pool = BodyPool(limit=1000, wait_s=5.0)
        shares = [pool.share() for _ in range(3)]
        for s in shares:
            assert await pool.acquire(300, s)
        results = {}

        async def more(i):
            results[i] = await pool.acquire(300, shares[i])
            if not results[i]:
                pool.release(shares[i])              # the middleware does this as the request ends

        tasks = [asyncio.ensure_future(more(i)) for i in (2, 1, 0)]
        await asyncio.sleep(0.3)                     # well within the 5 s wait
        assert results == {2: False, 0: True}, results
        assert shares[0].held == 600 and shares[1].held == 300 and pool.held == 900
        pool.release(shares[0])
        await asyncio.gather(*tasks)
        assert results[1] is True and pool.held == shares[1].held == 600

    asyncio.run(scenario())


def test_the_middleware_holds_bodies_until_the_answer(monkeypatch):
    """Two requests of 600 bytes with a 1,000-byte pool: the second waits while the first is
    being served, and gets 503 with Retry-After when the first outlasts the wait; once the first
    is answered, the pool is empty again."""
    from qwen3vl_vllm.serving import policy

    monkeypatch.setenv("QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT", "1000")
    monkeypatch.setattr(policy, "BodyPool", lambda limit: BodyPool(limit, wait_s=0.2))
    release = asyncio.Event()
    reached = []

    async def app(scope, receive, send):
        reached.append(len((await receive())["body"]))
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = policy.PolicyMiddleware(app)
    body = json.dumps({"input": "x" * 580}).encode()
    assert len(body) > 500

    async def post(sent):
        chunks = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(m):
            sent.append(m)

        await mw({"type": "http", "method": "POST", "path": "/v1/embeddings",
                  "headers": [(b"content-length", str(len(body)).encode())]}, receive, send)

    async def scenario():
        first, second, third = [], [], []
        t1 = asyncio.ensure_future(post(first))
        await asyncio.sleep(0.05)
        assert mw.bodies.held == len(body)
        await post(second)                       # waits 0.2 s, then 503
        assert second[0]["status"] == 503 and (b"retry-after", b"2") in second[0]["headers"]
        message = json.loads(second[1]["body"])["error"]["message"]
        assert message.startswith(f"server busy: it holds {len(body)} bytes of request bodies in "
                                  f"flight, and this request's {len(body)} would go over its limit of 1000")
        assert "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT" in message
        t3 = asyncio.ensure_future(post(third))  # waits; the first ends within its wait
        await asyncio.sleep(0.05)
        release.set()
        await t1
        await t3
        assert first[0]["status"] == 200 and third[0]["status"] == 200
        assert reached == [len(body), len(body)] and mw.bodies.held == 0

    asyncio.run(scenario())


def _middleware(monkeypatch, app, *, pool: int, wait_s: float = 0.2, timeout_s: int = 60):
    from qwen3vl_vllm.serving import policy

    monkeypatch.setenv("QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT", str(pool))
    monkeypatch.setenv("QWEN3VL_BODY_TIMEOUT_S", str(timeout_s))
    monkeypatch.setattr(policy, "BodyPool", lambda limit: BodyPool(limit, wait_s=wait_s))
    return policy.PolicyMiddleware(app)


class _Upload:
    """A client's side of one POST: chunks handed to the server when it asks, with an optional
    pause before each (a slow client), and what the server sent back."""

    def __init__(self, chunks, *, pauses=None, length=None, path="/v1/embeddings"):
        self.chunks = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                       for i, c in enumerate(chunks)]
        self.pauses = list(pauses or [0] * len(chunks))
        self.headers = [] if length is None else [(b"content-length", str(length).encode())]
        self.path, self.sent = path, []
        self.stalled = asyncio.Event()  # set once the client has nothing more to send

    async def receive(self):
        if not self.chunks:
            self.stalled.set()
            await asyncio.sleep(3600)  # a client that never sends the rest
        await asyncio.sleep(self.pauses.pop(0))
        return self.chunks.pop(0)

    async def send(self, message):
        self.sent.append(message)

    async def post(self, mw):
        await mw({"type": "http", "method": "POST", "path": self.path, "headers": self.headers},
                 self.receive, self.send)

    @property
    def status(self):
        return self.sent[0]["status"] if self.sent else None

    @property
    def message(self):
        return json.loads(self.sent[1]["body"])["error"]["message"]


async def _echo(scope, receive, send):
    """An app that reads the whole body and answers with its size; a disconnect while it reads
    gets the 400 FastAPI sends ("There was an error parsing the body")."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail": "There was an error parsing the body"}'})
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


def test_a_body_without_a_length_is_counted_chunk_by_chunk(monkeypatch):
    mw = _middleware(monkeypatch, _echo, pool=1000, wait_s=0.1)
    mw.bodies.held = 900                         # other requests hold 900 bytes
    up = _Upload([b'{"input": "' + b"x" * 200, b'"}'])
    asyncio.run(up.post(mw))
    assert up.status == 503 and mw.bodies.held == 900
    assert up.message.startswith("server busy: it holds 900 bytes of request bodies in flight, "
                                 "and this request's 211 would go over its limit of 1000")


def test_a_slow_upload_holds_only_what_it_has_sent(monkeypatch):
    """A client that declares 10,000 bytes and sends 100 holds 100 of a 1,000-byte pool, not
    10,000: requests of 800 bytes beside it are served. (A reservation from content-length let
    16 such uploads fill a server's pool for everyone.)"""
    mw = _middleware(monkeypatch, _echo, pool=1000)

    async def scenario():
        slow = _Upload([b"x" * 100, b"y" * 9900], pauses=[0, 3600], length=10_000)
        holder = asyncio.ensure_future(slow.post(mw))
        await asyncio.sleep(0.05)
        assert mw.bodies.held == 100
        for _ in range(3):
            up = _Upload([b"z" * 800], length=800)
            await up.post(mw)
            assert up.status == 200 and json.loads(up.sent[1]["body"]) == {"size": 800}
            assert mw.bodies.held == 100
        holder.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [300, 20_000], ids=["app-reads", "read-here"])
def test_a_stalled_body_gets_408_and_frees_its_bytes(monkeypatch, size):
    """A body whose rest never comes gets 408 naming the setting after the timeout, whether the
    app reads it (a small body) or the middleware does (one long enough to count), and what it
    held goes back to the pool. The app never sees the request."""
    mw = _middleware(monkeypatch, _echo, pool=1_000_000, timeout_s=1)

    async def scenario():
        up = _Upload([b'{"input": "' + b"x" * 100, b"the rest"], pauses=[0, 3600], length=size)
        t0 = asyncio.get_running_loop().time()
        await up.post(mw)
        return asyncio.get_running_loop().time() - t0, up

    seconds, up = asyncio.run(scenario())
    assert up.status == 408 and seconds >= 0.99, (up.sent, seconds)  # at the timeout, not before
    assert len(up.sent) == 2 and (b"connection", b"close") in up.sent[0]["headers"]
    assert up.message == (f"request body: 111 of {size} bytes arrived in the 1 s this server "
                          "waits for a body (QWEN3VL_BODY_TIMEOUT_S). Send the body as fast as the "
                          "network allows, send smaller requests, or raise the limit")
    assert mw.bodies.held == 0


def test_the_timeout_counts_the_client_only(monkeypatch):
    """The timeout is for the whole body, counted while the server waits on the client: with
    1 s, a body in 2 chunks 0.4 s apart (0.8 s) is served and one in 4 (1.6 s) gets 408. An app
    that is slow between its reads (0.3 s a chunk, 1.2 s for 4 chunks) is not charged to the
    client."""
    async def slow_app(scope, receive, send):
        more = True
        while more:
            await asyncio.sleep(0.3)
            message = await receive()
            if message["type"] != "http.request":
                raise RuntimeError("client disconnected")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = _middleware(monkeypatch, slow_app, pool=0, timeout_s=1)
    for pauses, status in (([0.4] * 2, 200), ([0.4] * 4, 408), ([0] * 4, 200)):
        up = _Upload([b"a"] * len(pauses), pauses=pauses, length=len(pauses))
        asyncio.run(up.post(mw))
        assert up.status == status, (pauses, up.sent)


def test_a_request_alone_takes_more_than_the_pool(monkeypatch):
    """With a 1,000-byte pool, a lone request of 3,000 bytes in three chunks is served: it is
    the only one holding bytes."""
    mw = _middleware(monkeypatch, _echo, pool=1000)
    up = _Upload([b"a" * 1000] * 3, length=3000)
    asyncio.run(up.post(mw))
    assert up.status == 200 and json.loads(up.sent[1]["body"]) == {"size": 3000}
    assert mw.bodies.held == 0
