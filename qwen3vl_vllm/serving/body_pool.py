"""The request bodies one API server process holds at once, bounded in bytes and in time.

Each request's body stays in memory from its upload to its answer (the bytes, the parsed JSON,
vLLM's request object), and vLLM takes any number of requests at once: its tokeniser and
renderer work on one thread, so heavy requests queue with their bodies held. The body limit
(64 MiB) bounds one request; this bounds them together. Each chunk of a body is charged to the
pool as it arrives: a chunk that would take the process over
``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT`` (default 512 MiB; ``0`` for none) waits for others to
finish (up to ``WAIT_S``), then the request gets 503 with ``Retry-After``, which the openai SDK
and most HTTP clients retry. A request alone always goes through.

Bytes are charged as they arrive, not from ``content-length``: a length reserved before the
bytes came let 16 connections that each declared 32 MiB and sent a byte a second fill the pool,
and every other request got 503 (measured on a tiny server). Now such an upload holds what it
has sent, and for at most ``QWEN3VL_BODY_TIMEOUT_S`` (default 60 s) of waiting on the client,
after which it gets 408. Holding the pool full then takes sending 512 MiB a minute.

Charged as they arrive, a burst of large bodies can fill the pool with half-received ones that
each wait for room another holds. So room goes to waiters in the order their requests came,
and the first in line takes its room from the latest waiters, which give up at once (503)
instead of at the end of their wait. ``benchmarks/bodies_in_flight.py`` (a tiny embedding
server, 32 requests at once of 8 texts of 2 M characters, 16 MB each, pool of 128 MiB):

- no pool: all 32 held at once, the API server grew by 3.0 GB (~6x the bytes of the bodies);
- reserved from ``content-length``: 13 served, 19 got 503, 21.6 s, +0.8 GB;
- charged as they arrive, in no order: 12 served, 20 got 503, but 149 s (every body crept on);
- charged as they arrive, in order (this): 9 served, 23 got 503, 18.1 s, +0.8 GB.

Example::

    pool = BodyPool(limit=1000, wait_s=0.1)
    share = pool.share()
    assert asyncio.run(pool.acquire(600, share)) and pool.held == share.held == 600
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

from qwen3vl_vllm.serving.request_limits import env_limit

IN_FLIGHT_ENV = "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT"
DEFAULT_IN_FLIGHT = 512 * 1024 * 1024  # 8 bodies at the 64 MiB limit; ~3 GB of API server
WAIT_S = 10.0  # how long a request waits for room before its 503
RETRY_AFTER_S = 2
TIMEOUT_ENV = "QWEN3VL_BODY_TIMEOUT_S"
# waiting on the client for one body, in all (Node's http server allows 300 s for a whole
# request, nginx 60 s between two reads): 64 MiB in 60 s is 1.1 MB/s
DEFAULT_TIMEOUT_S = 60


def in_flight_limit(environ=None) -> int:
    """The limit in force: ``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT``, else the default; 0 = none."""
    return env_limit(environ, IN_FLIGHT_ENV, DEFAULT_IN_FLIGHT, "bytes")


def body_timeout_s(environ=None) -> int:
    """Seconds a request may keep the server waiting for its body: ``QWEN3VL_BODY_TIMEOUT_S``,
    else the default; 0 = no limit."""
    return env_limit(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_S, "seconds")


class Share:
    """One request's part of the pool: its place in line (``ticket``, earlier first) and the
    bytes it holds."""

    __slots__ = ("ticket", "held", "evicted", "wake")

    def __init__(self, ticket: int):
        self.ticket, self.held, self.evicted = ticket, 0, False
        self.wake: asyncio.Event | None = None  # set while it waits: look again


class BodyPool:
    """Bytes held by the requests in flight on one event loop (no lock: the loop is one thread).

    Room goes to waiting requests in the order they came: a request that has to wait takes
    nothing until those before it have what they need. When the pool is full and the first in
    line could go on with what later waiters hold, the latest of those give up their room (503
    at once) so it can: otherwise a burst of large bodies fills the pool with half-received
    ones, each waiting for room another holds, and none finishes until their waits run out."""

    def __init__(self, limit: int, wait_s: float = WAIT_S):
        self.limit = limit
        self.wait_s = wait_s
        self.held = 0
        self._tickets = itertools.count()
        self._waiting: dict[int, Share] = {}  # by ticket
        self._line: list[int] = []  # heap of the waiters' tickets (and some that have left)
        self._leaving: set[Share] = set()  # told to give up their bytes, not yet released

    def share(self) -> Share:
        return Share(next(self._tickets))

    def _fits(self, n: int, share: Share) -> bool:
        return not self.limit or self.held == share.held or self.held + n <= self.limit

    def _take(self, n: int, share: Share) -> bool:
        self.held += n
        share.held += n
        return True

    async def acquire(self, n: int, share: Share | None = None) -> bool:
        """Take ``n`` more bytes for a request (``share``: what it holds already), waiting up
        to ``wait_s`` for room; False when there was none, or when an earlier request needed
        its room. A request that holds all there is (alone) always gets its bytes."""
        share = share if share is not None else self.share()
        if not self._waiting and self._fits(n, share):
            return self._take(n, share)
        deadline = time.monotonic() + self.wait_s
        self._waiting[share.ticket] = share
        heapq.heappush(self._line, share.ticket)
        share.wake = asyncio.Event()
        try:
            while not share.evicted:
                if self._first() is share:
                    if self._fits(n, share):
                        return self._take(n, share)
                    self._evict_for(n, share)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                share.wake.clear()
                try:  # woken when room is freed, the line moves, or it is told to go
                    await asyncio.wait_for(share.wake.wait(), left)
                except asyncio.TimeoutError:
                    pass
            return False
        finally:
            first = self._first() is share
            del self._waiting[share.ticket]
            share.wake = None
            if first:
                self._wake_first()

    def _first(self) -> Share | None:
        while self._line and self._line[0] not in self._waiting:
            heapq.heappop(self._line)
        return self._waiting[self._line[0]] if self._line else None

    def _wake_first(self) -> None:
        first = self._first()
        if first is not None and first.wake is not None:
            first.wake.set()

    def _evict_for(self, n: int, first: Share) -> None:
        """Tell the latest waiters to give up their bytes, when that makes room for ``first``."""
        later = sorted((s for t, s in self._waiting.items() if t > first.ticket and not s.evicted),
                       key=lambda s: -s.ticket)
        short = self.held + n - self.limit - sum(s.held for s in self._leaving)
        if short <= 0 or sum(s.held for s in later) < short:
            return  # room is on its way, or they would not free enough: wait for the others
        for s in later:
            if short <= 0:
                break
            s.evicted = True
            self._leaving.add(s)
            short -= s.held
            if s.wake is not None:
                s.wake.set()

    def release(self, share: Share) -> None:
        self.held -= share.held
        share.held = 0
        self._leaving.discard(share)
        self._wake_first()

    def busy_message(self, n: int) -> str:
        return (f"server busy: it holds {self.held} bytes of request bodies in flight, and this "
                f"request's {n} would go over its limit of {self.limit}. Retry in a few seconds, "
                f"send fewer large requests at once, or raise {IN_FLIGHT_ENV}")


def timeout_message(timeout_s: int, size: int, length: int | None) -> str:
    of = f" of {length}" if length is not None else ""
    return (f"request body: {size}{of} bytes arrived in the {timeout_s} s this server waits for a "
            f"body ({TIMEOUT_ENV}). Send the body as fast as the network allows, send smaller "
            "requests, or raise the limit")
