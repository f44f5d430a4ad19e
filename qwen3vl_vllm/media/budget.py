"""Bounded decoding: what one request may decode, and what the process may hold at once.

Why: a few megabytes of request can ask for tens of gigabytes of pixels. A solid 4000x4000 PNG
is ~50 KB and decodes to 48 MB; 64 of them as a frame list took a 24 GiB server down. Every
image, frame and video frame is therefore paid for from a ``DecodeBudget`` *before* it is held:

- an image when it is opened (its header gives width, height and mode: the bytes Pillow will
  allocate), and again after decoding if it turned out larger;
- a video-file frame when the decoder hands it over, before it is converted or kept (frames the
  sampling skips are dropped one at a time and cost only time);
- a frame of a frame list like an image, one frame at a time.

Those decoded bytes count for the request (``charge``). The copies made from them (RGB
conversion, resize, float pixels) are held from the process pool only (``hold``), and returned
(``credit``) as soon as they are dropped, so the pool sees what the process really holds.

Three limits, each a setting (environment variable; YAML ``media.*`` through the launcher):

- ``QWEN3VL_MAX_REQUEST_DECODED_BYTES`` (default 1 GiB): all bytes one request decodes and
  prepares, summed. Over it: a 400 naming the item and the limit. vLLM's own per-request
  budget (``VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES``, vLLM 0.33 and later) caps it further.
- ``QWEN3VL_MAX_DECODE_SECONDS`` (default 60): the wall time a request's media may take to
  decode, counted from its first decode; checked between frames. Over it: a 400.
- ``QWEN3VL_MAX_DECODED_BYTES_IN_FLIGHT`` (default 4 GiB): what all requests of one API server
  process hold at once (decoded or prepared, not yet released). A request that would go over it
  waits for others to finish, within its decode time, then gets a 503 (retried by clients).

Identical payloads within one request (vLLM decodes a reranking query once per document) are
charged to the request once; the process pool is charged for every copy, because every copy is
held.

Example::

    >>> from qwen3vl_vllm.media.budget import DecodeBudget
    >>> b = DecodeBudget(limit=100, seconds=5)
    >>> b.charge(60, "image")
    >>> b.charge(60, "image2")
    Traceback (most recent call last):
    ...
    qwen3vl_vllm.media.budget.DecodeLimitError: image2: decoding it would bring this request to 120 bytes decoded, above the limit of 100 bytes (QWEN3VL_MAX_REQUEST_DECODED_BYTES). Send smaller or fewer images or frames, or raise the limit
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from typing import Any

from qwen3vl_vllm.errors import MediaError, Qwen3VLError

GIB = 1024**3
REQUEST_BYTES_ENV = "QWEN3VL_MAX_REQUEST_DECODED_BYTES"
SECONDS_ENV = "QWEN3VL_MAX_DECODE_SECONDS"
IN_FLIGHT_ENV = "QWEN3VL_MAX_DECODED_BYTES_IN_FLIGHT"
VLLM_REQUEST_BYTES_ENV = "VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES"  # vLLM >= 0.33
DEFAULT_REQUEST_BYTES = 1 * GIB
DEFAULT_SECONDS = 60.0
DEFAULT_IN_FLIGHT = 4 * GIB
BUSY_MARKER = "qwen3vl-busy:"  # a message the server's error middleware turns into a 503

# bytes Pillow allocates per pixel for each mode (multi-band images are stored 4 bytes a pixel)
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def image_bytes(mode: str, width: int, height: int) -> int:
    """What Pillow holds for a decoded image of this mode and size."""
    return int(width) * int(height) * _PIXEL_BYTES.get(mode, 4)


class DecodeLimitError(MediaError):
    """A request asked for more decoding than this server allows (the message names the limit)."""


class ServerBusyError(Qwen3VLError):
    """The process holds as much decoded media as it may; the request can be retried."""


class DecodePool:
    """Bytes held by all requests of this process at once (a counting semaphore in bytes)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.held = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, deadline: float) -> bool:
        """Take ``n`` bytes, waiting until ``deadline`` (``time.monotonic()``) at most. A
        request bigger than the whole pool is admitted alone (its own limit still applies)."""
        with self._cond:
            while self.held and self.held + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            self.held += n
            return True

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.held = max(0, self.held - n)
            self._cond.notify_all()


def _env_number(name: str, default: float, environ: Any = None) -> float:
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    value = float(raw)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (0: no limit), got {raw}")
    return value


def _vllm_request_limit() -> int:
    """vLLM's own per-request decode budget as vLLM reads it (its default included: 0.33 caps a
    request at 715,827,880 bytes unless told otherwise); 0 where this vLLM has none (0.32)."""
    try:
        import vllm.envs as envs
    except ImportError:
        return 0
    value = getattr(envs, VLLM_REQUEST_BYTES_ENV, 0)  # vllm.envs raises AttributeError if unknown
    return max(0, int(value or 0))


def request_limit(environ: Any = None) -> int:
    """The per-request limit in force: ours, capped by vLLM's own when vLLM has one; 0 = none.

    ``environ`` given (tests, the docs): both read from it only. Otherwise, with vLLM's variable
    unset, vLLM's own default applies where vLLM has one, so the plugin's connector (which
    replaces vLLM's) never allows more than plain vLLM would."""
    return _request_limits(environ)[0]


def _request_limits(environ: Any = None) -> tuple[int, str]:
    """``(limit, the variable that sets it)``."""
    ours = int(_env_number(REQUEST_BYTES_ENV, DEFAULT_REQUEST_BYTES, environ))
    env = os.environ if environ is None else environ
    if env.get(VLLM_REQUEST_BYTES_ENV, "").strip():  # set: honoured on every vLLM (tighter only)
        theirs = int(_env_number(VLLM_REQUEST_BYTES_ENV, 0, env))
    else:
        theirs = _vllm_request_limit() if environ is None else 0
    if theirs and (not ours or theirs < ours):
        return theirs, VLLM_REQUEST_BYTES_ENV
    return ours, REQUEST_BYTES_ENV


def limits(environ: Any = None) -> dict:
    """The three limits in force (0 = none), for start-up logs and the docs."""
    request_bytes, set_by = _request_limits(environ)
    return {"request_bytes": request_bytes, "request_bytes_set_by": set_by,
            "seconds": _env_number(SECONDS_ENV, DEFAULT_SECONDS, environ),
            "in_flight_bytes": int(_env_number(IN_FLIGHT_ENV, DEFAULT_IN_FLIGHT, environ))}


_POOL: dict[str, DecodePool] = {}
_POOL_LOCK = threading.Lock()


def process_pool() -> DecodePool | None:
    """The process-wide pool (``QWEN3VL_MAX_DECODED_BYTES_IN_FLIGHT``), or None when 0."""
    limit = limits()["in_flight_bytes"]
    if not limit:
        return None
    with _POOL_LOCK:
        pool = _POOL.get("pool")
        if pool is None or pool.limit != limit:
            pool = _POOL["pool"] = DecodePool(limit)
        return pool


def _size(n: float) -> str:
    if n < 2**20:
        return f"{int(n)} bytes"
    return f"{n / 2**20:.1f} MiB" if n < GIB else f"{n / GIB:.2f} GiB"


class DecodeBudget:
    """What one request may decode. Thread-safe: vLLM decodes a request's items on threads.

    ``charge(n, where)`` before ``n`` bytes are held; ``credit(n)`` when transient bytes are
    freed (they still count for the request, but no longer for the process); ``close()`` when
    the request is done (everything it held goes back to the process pool).
    """

    def __init__(self, *, limit: int | None = None, seconds: float | None = None,
                 pool: DecodePool | None = None, set_by: str | None = None):
        lim = limits()
        self.limit = lim["request_bytes"] if limit is None else int(limit)
        self.set_by = (lim["request_bytes_set_by"] if limit is None else REQUEST_BYTES_ENV) \
            if set_by is None else set_by
        self.seconds = lim["seconds"] if seconds is None else float(seconds)
        self.pool = pool
        self.used = 0  # bytes charged to the request (cumulative)
        self.held = 0  # bytes taken from the pool and not yet returned
        self.started: float | None = None
        self.busy = False
        self._seen: set = set()
        self._lock = threading.Lock()

    def _deadline(self) -> float:
        if self.started is None:
            self.started = time.monotonic()
        return self.started + self.seconds if self.seconds else float("inf")

    def check_time(self, where: str) -> None:
        """Refuse when the request's decoding has run past ``seconds``."""
        if self.seconds and time.monotonic() > self._deadline():
            raise DecodeLimitError(
                where, f"decoding this request's media took longer than {self.seconds:g} s "
                f"({SECONDS_ENV})", "Send shorter or lower-resolution videos, fewer frames, or "
                "smaller images")

    def first_time(self, key: Any) -> bool:
        """True the first time a payload (by identity) is seen in this request."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def charge(self, n: int, where: str, *, count: bool = True) -> None:
        """Pay for ``n`` decoded bytes about to be held: they count for the request (unless
        ``count=False``: a payload already charged to it) and are taken from the process pool."""
        n = int(n)
        self.check_time(where)
        if count:
            with self._lock:
                total = self.used + n
                if self.limit and total > self.limit:
                    raise DecodeLimitError(
                        where, f"decoding it would bring this request to {_size(total)} decoded, "
                        f"above the limit of {_size(self.limit)} ({self.set_by})",
                        "Send smaller or fewer images or frames, or raise the limit")
                self.used = total
        self.hold(n, where)

    def hold(self, n: int, where: str) -> None:
        """Take ``n`` bytes of a copy (a converted or resized image, a float frame) from the
        process pool; they do not count as decoded for the request."""
        n = int(n)
        if self.pool is None or n <= 0:
            return
        if not self.pool.acquire(n, self._deadline()):
            self.busy = True
            raise ServerBusyError(f"{BUSY_MARKER} {where}: the server holds as much decoded media "
                                  f"as it may ({_size(self.pool.limit)}, {IN_FLIGHT_ENV}); "
                                  "retry shortly")
        with self._lock:
            self.held += n

    def try_hold(self, n: int) -> bool:
        """Take ``n`` bytes from the process pool only if they fit now (no wait, no error): for
        copies that are an option, not a need (``split_resize``)."""
        n = int(n)
        if self.pool is None or n <= 0:
            return True
        if not self.pool.acquire(n, 0.0):  # a deadline already past: one look, no wait
            return False
        with self._lock:
            self.held += n
        return True

    def credit(self, n: int) -> None:
        """Transient bytes were freed: give them back to the process pool."""
        if self.pool is None or n <= 0:
            return
        with self._lock:
            n = min(int(n), self.held)
            self.held -= n
        self.pool.release(n)

    def close(self) -> None:
        with self._lock:
            n, self.held = self.held, 0
        if self.pool is not None:
            self.pool.release(n)


_SERVING = [0]  # requests of this process inside ``serving`` now


def requests_in_flight() -> int:
    """How many requests this process's server is serving now (0 outside a server: the offline
    API, the batch runner)."""
    return _SERVING[0]


_CURRENT: contextvars.ContextVar[DecodeBudget | None] = contextvars.ContextVar(
    "qwen3vl_decode_budget", default=None)


def current() -> DecodeBudget | None:
    """The budget of the request being served (set by the server's middleware), or None."""
    return _CURRENT.get()


def for_request() -> DecodeBudget:
    """The request's budget, else a fresh one with the configured limits and no process pool
    (the batch runner, or a connector used outside a request)."""
    return _CURRENT.get() or DecodeBudget()


class serving:
    """Context manager the server's middleware wraps a request in: a fresh budget with the
    process pool, visible to the media code of that request, released at the end.
    ``settings`` are ``limits()`` read once (the middleware reads them at start-up)."""

    def __init__(self, settings: dict | None = None):
        self.settings = settings or limits()

    def __enter__(self) -> DecodeBudget:
        self.budget = DecodeBudget(limit=self.settings["request_bytes"],
                                   set_by=self.settings.get("request_bytes_set_by"),
                                   seconds=self.settings["seconds"], pool=process_pool())
        self._token = _CURRENT.set(self.budget)
        with _POOL_LOCK:
            _SERVING[0] += 1
        return self.budget

    def __exit__(self, *exc) -> bool:
        with _POOL_LOCK:
            _SERVING[0] -= 1
        _CURRENT.reset(self._token)
        self.budget.close()
        return False
