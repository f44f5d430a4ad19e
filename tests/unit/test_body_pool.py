"""The request bodies a server process holds at once (``serving.body_pool``) and the policy
middleware that reserves them: what waits, what gets 503, what always goes through."""

from __future__ import annotations

import asyncio
import json

import pytest

from qwen3vl_vllm.serving.body_pool import BodyPool, in_flight_limit


def test_the_setting():
    assert in_flight_limit({}) == 512 * 1024 ** 2
    assert in_flight_limit({"QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT": "0"}) == 0
    for bad in ("-1", "1GiB"):
        with pytest.raises(ValueError, match="QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT"):
            in_flight_limit({"QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT": bad})


def test_the_pool_waits_then_refuses():
    async def scenario():
        pool = BodyPool(limit=1000, wait_s=0.3)
        assert await pool.acquire(600) and pool.held == 600
        assert not await pool.acquire(500) and pool.held == 600     # waited 0.3 s: no room
        waiter = asyncio.ensure_future(pool.acquire(500))
        await asyncio.sleep(0.05)
        pool.release(600)                                            # room while it waits
        assert await waiter and pool.held == 500
        assert pool.try_add(500) and not pool.try_add(1)             # exactly at the limit
        pool.release(1000)
        assert await pool.acquire(5000) and pool.held == 5000        # alone: always goes through
        off = BodyPool(limit=0)
        assert await off.acquire(10 ** 12) and off.try_add(10 ** 12)

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


def test_a_body_without_a_length_is_counted_chunk_by_chunk(monkeypatch):
    from qwen3vl_vllm.serving import policy

    monkeypatch.setenv("QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT", "1000")
    mw = policy.PolicyMiddleware(None)
    mw.bodies.held = 900                         # other requests hold 900 bytes
    chunks = [{"type": "http.request", "body": b'{"input": "' + b"x" * 200, "more_body": True},
              {"type": "http.request", "body": b'"}', "more_body": False}]
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(m):
        sent.append(m)

    asyncio.run(mw({"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []},
                   receive, send))
    assert sent[0]["status"] == 503 and mw.bodies.held == 900
