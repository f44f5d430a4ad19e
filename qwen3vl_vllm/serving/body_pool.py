"""The request bodies one API server process holds at once, bounded.

Each request's body stays in memory from its upload to its answer (the bytes, the parsed JSON,
vLLM's request object), and vLLM takes any number of requests at once: its tokeniser and
renderer work on one thread, so heavy requests queue with their bodies held. The body limit
(64 MiB) bounds one request; this bounds them together. A request whose body would take the
process over ``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT`` (default 512 MiB; ``0`` for none) waits,
before its body is read, for others to finish (up to ``WAIT_S``), then gets 503 with
``Retry-After``, which the openai SDK and most HTTP clients retry. A request alone always goes
through.

Measured (``benchmarks/bodies_in_flight.py``, a tiny embedding server, 32 requests at once of
8 texts of 2 M characters, 16 MB each): with no limit all 32 were held at once and the API
server grew by 3.0 GB, ~6x the bytes of the bodies; with 128 MiB, 13 were served, 19 got 503
after their wait, and it grew by 0.8 GB.

Counted from ``content-length`` (the server reads no more than that), or chunk by chunk for a
body sent without one.

Example::

    pool = BodyPool(limit=1000, wait_s=0.1)
    assert asyncio.run(pool.acquire(600)) and pool.held == 600
"""

from __future__ import annotations

import asyncio
import time

from qwen3vl_vllm.serving.request_limits import env_limit

IN_FLIGHT_ENV = "QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT"
DEFAULT_IN_FLIGHT = 512 * 1024 * 1024  # 8 bodies at the 64 MiB limit; ~3 GB of API server
WAIT_S = 10.0  # how long a request waits for room before its 503
POLL_S = 0.02  # the waiting request looks again this often (only when the server is full)
RETRY_AFTER_S = 2


def in_flight_limit(environ=None) -> int:
    """The limit in force: ``QWEN3VL_MAX_BODY_BYTES_IN_FLIGHT``, else the default; 0 = none."""
    return env_limit(environ, IN_FLIGHT_ENV, DEFAULT_IN_FLIGHT, "bytes")


class BodyPool:
    """Bytes held by the requests in flight on one event loop (no lock: the loop is one thread)."""

    def __init__(self, limit: int, wait_s: float = WAIT_S):
        self.limit = limit
        self.wait_s = wait_s
        self.held = 0

    def _fits(self, n: int) -> bool:
        return not self.limit or self.held == 0 or self.held + n <= self.limit

    def try_add(self, n: int) -> bool:
        """Take ``n`` more bytes now if they fit (a chunk of a body sent without a length)."""
        if not self._fits(n):
            return False
        self.held += n
        return True

    async def acquire(self, n: int) -> bool:
        """Take ``n`` bytes, waiting up to ``wait_s`` for room; False when there was none."""
        deadline = time.monotonic() + self.wait_s
        while not self._fits(n):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n

    def busy_message(self, n: int) -> str:
        return (f"server busy: it holds {self.held} bytes of request bodies in flight, and this "
                f"request's {n} would go over its limit of {self.limit}. Retry in a few seconds, "
                f"send fewer large requests at once, or raise {IN_FLIGHT_ENV}")
