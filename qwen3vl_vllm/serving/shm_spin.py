"""vLLM's step queue readers on a CPU server: spin 2 ms, then sleep until the next write, instead
of spinning 1 s.

Why: vLLM's executor hands each step to its worker, and the results back, through a
shared-memory ring (``shm_broadcast.MessageQueue``). A reader that has read in the last
``busy_loop_s`` (1 s) spins on ``sched_yield()``; after that it waits on a zmq notification.
That buys microseconds on a GPU box with spare cores. On a CPU server the engine core and the
worker both spin while the other works, on the cores the model and the API server need.
Measured by the sampler of ``benchmarks/account.py`` (tiny checkpoint, 2 cores, c = 8, server
CPU per item and items/s, one run each, before the other CPU levers):

| reader wait | short text | 512x512 photo |
|---|---|---|
| spin 1 s (vLLM's) | 19.6 ms, 108/s (8 ms of it spinning) | 87 ms, 24.8/s (26 ms spinning) |
| no spin: zmq wake-up at once | 11.3 ms, 33/s (each hand-off waits for a wake-up) | 47.5 ms, 31.8/s |
| spin 2 ms, then zmq | 6.9 ms, 204/s | 49.5 ms, 29.2/s |
| spin 20 ms, then zmq | 13.4 ms, 137/s | 47.9 ms, 30.5/s |

Spinning 2 ms keeps the quick hand-offs of short steps; the zmq wake-up after it cost single
requests (c = 1) up to 0.8x plain vLLM's rate. So the reader then naps: it sleeps ``NAP_S``
(0.1 ms) and looks again, for the rest of vLLM's 1 s window, and only then waits on vLLM's
notification socket. With the nap, one round each (``./launch.sh bench frontend --kinds text``):
single short texts 111 req/s against plain vLLM's 112, at 10.6 against 15.0 ms of CPU.

On the CPU platform the plugin's engine defaults set ``QWEN3VL_SHM_BUSY_LOOP_S=0.002``
(logged) before the engine processes start; every process that loads the plugin builds its
readers that way. A value set by the user wins; nothing changes while the variable is unset
(GPU servers, by default). ``QWEN3VL_SHM_NAP_S`` sets the first nap.

The nap grows with the wait: a nap is ``NAP_GROWTH`` (5 %) of the time since the reader's last
read, from ``NAP_S`` up to ``NAP_MAX_S`` (1 ms; ``QWEN3VL_SHM_NAP_MAX_S``, and
``QWEN3VL_SHM_NAP_GROWTH``). The engine core waits out each forward on the worker's results,
and a 0.1 ms nap woke it ~80 times in a 10 ms forward. Measured with
``benchmarks/text_paths.py`` (one plugin server per setting, paused in turn, 4 rounds of 240
short texts, 2026-12-03; medians):

| nap | c = 1: texts/s, CPU per text | c = 8: texts/s, CPU per text |
|---|---|---|
| 0.1 ms, fixed (before) | 103.6/s, 11.40 ms | 208.9/s, 6.56 ms |
| 5 % of the wait, at most 1 ms (kept) | 102.8/s, 10.85 ms | 218.4/s, 6.23 ms |
| 10 % of the wait, at most 1 ms | 98.0/s, 10.77 ms | 216.4/s, 5.98 ms |

10 % cost single requests 5 % of their rate (and 7-11 % in two earlier runs); 5 % keeps it.
vLLM's own idle mode (a zmq notification per write, ``SpinCondition.wait`` past the busy
window) was also tried right after the spin: the server's prompt throughput fell from ~3,700
to ~82 tokens/s, as if the readers slept until a poll timed out (not looked into further).

Past the spin a reader now sleeps on its queue's wake word (``shm_wake``: a futex the writer
bumps after each write, ``notify``), at most ``WAKE_TIMEOUT_S`` at a time, instead of napping;
it naps as above where the word is missing (a writer without the plugin) or with
``QWEN3VL_SHM_WAKE=0``. A write reached a waiting reader in another process 141 against 259 us
after 8 ms of quiet, 47 against 89 us after 1 ms (``benchmarks/handoff.py``, 3 rounds of 300;
spinning: 33 and 6 us). On a server the effect is within the rounds' noise
(``2026-12-04-wake/``): see docs/serving-cost.md.

A reader with a word also stops spinning where spinning does not pay: after ``SKIP_AFTER`` (2)
waits in a row that each outlasted the spin, it sleeps on the word at once, until a wait is
short again (or a read finds its step already written). The spin window counts from the last
read, so the one reader that spun for nothing is the engine core's: at c = 8 it reads a step's
results, schedules the next step within a fraction of a millisecond, and then spun ~2 ms of a
forward that lasts several. The worker's step reader keeps its spin while steps follow each
other closely. At c = 1, counting from reads, neither reader spins (each wait starts more than 2
ms after the last read; see the next paragraph). ``benchmarks/text_paths.py``, one plugin server
each way, paused in turn, four runs on 2026-12-06 (``2026-12-06-skip/``): skip/spin texts/s
paired by round, pooled over 74 rounds, 1.031 (95 % interval 1.003-1.060; 46 rounds above 1) at
c = 8; engine core CPU per text 0.55 -> 0.51 ms; 0.991 (0.964-1.053) over 64 rounds at c = 1,
where nothing changes. ``QWEN3VL_SHM_SKIP_SPIN=0`` spins every time.

The spin window also opens when the reader's own process writes to a step queue: a process that
has just handed work on (the engine core writing a step) spins for its answer. At c = 1 the
engine core reads a single text's result ~1.4 ms after writing its step (what its CPU per text
rose by once it spun through that wait); counted from its last read, that wait began long after
the spin window had closed, so it slept and paid a wake-up (~0.1 ms, ``benchmarks/handoff.py``)
per request, where plain vLLM's spinning reader paid none. Where the answer takes longer than
the spin (a forward of several ms at c = 8), the skip above stops it.
``benchmarks/text_paths.py``, one plugin server each way and plain vLLM, two runs of 24 rounds
of 50 texts on 2026-12-07 (``2026-12-07-after-write/``), texts/s paired by round over the 48:
with/without 1.052 (95 % interval 1.015-1.071) at c = 1, 1.024 (0.948-1.075) at c = 8; with it
against plain vLLM 1.019 (1.008-1.051) at c = 1. The engine core's CPU per text at c = 1 rose
1.8-1.9 -> 3.2 ms (the whole tree: 0.67-0.69x plain vLLM's). ``QWEN3VL_SHM_SPIN_AFTER_WRITE=0``
counts from the last read only.

Example::

    QWEN3VL_SHM_BUSY_LOOP_S=0.001 vllm serve Qwen/Qwen3-VL-Embedding-2B   # spin for 1 ms
"""

from __future__ import annotations

import functools
import logging
import os
import time

logger = logging.getLogger("vllm.qwen3vl_vllm")
ENV = "QWEN3VL_SHM_BUSY_LOOP_S"
CPU_DEFAULT = "0.002"
NAP_ENV = "QWEN3VL_SHM_NAP_S"
NAP_S = 0.0001  # a napping reader looks again after this long (QWEN3VL_SHM_NAP_S to change)
NAP_MAX_ENV = "QWEN3VL_SHM_NAP_MAX_S"
NAP_MAX_S = 0.001  # the longest nap, reached as the wait goes on (NAP_GROWTH of the time waited)
NAP_GROWTH_ENV = "QWEN3VL_SHM_NAP_GROWTH"
NAP_GROWTH = 0.05  # a nap is at most this share of the time since the last read: <= 5 % added wait
WAKE_ENV = "QWEN3VL_SHM_WAKE"  # 1 (default): past the spin, sleep on the queue's wake word; 0: nap
WAKE_TIMEOUT_S = 0.005  # the longest sleep on the wake word: a wake is never what progress relies on
SKIP_ENV = "QWEN3VL_SHM_SKIP_SPIN"  # 1 (default): a reader whose waits outlast the spin sleeps at once; 0: spins
SKIP_AFTER = 2  # waits in a row longer than the spin, after which a reader stops spinning
AFTER_WRITE_ENV = "QWEN3VL_SHM_SPIN_AFTER_WRITE"  # 1 (default): a write by this process opens the spin window
_last_write = [0.0]  # when this process last wrote to a step queue (time.monotonic)
_SENTINEL = "_qwen3vl_vllm_busy_loop"
_sleep = time.sleep  # a name of this module's own (tests replace it, not time.sleep)


def busy_loop_s(environ=None) -> float | None:
    """The busy-loop time asked for, or None (vLLM's own). A bad value is refused by name."""
    raw = (environ if environ is not None else os.environ).get(ENV)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} is not a number of seconds; use e.g. {ENV}=0 "
                         "(no busy loop) or 1 (vLLM's default)") from None
    if not value >= 0:
        raise ValueError(f"{ENV}={raw!r} must be >= 0 seconds")
    return value


def nap_s(since: float, nap: float, nap_max: float, growth: float = NAP_GROWTH) -> float:
    """How long a napping reader sleeps ``since`` seconds after its last read: ``nap`` at first,
    growing with the wait (``NAP_GROWTH`` of it) up to ``nap_max``, so a long wait (a forward of
    many ms) wakes the reader fewer times, and adds at most ``growth`` of it."""
    return min(nap_max, max(nap, growth * since))


def patch() -> str | None:
    """Wrap ``SpinCondition.__init__``, ``.wait``, ``.record_read`` and ``.notify`` so readers
    spin for ``ENV``'s seconds after their last read (or their process's last write), then sleep
    on the queue's wake word (or nap, without one) for the rest of vLLM's busy window, then wait
    on its notification socket as vLLM does; the writer bumps the word after each write and
    notes when it wrote. Nothing changes while ``ENV`` is unset. Idempotent: None when already
    installed in this process."""
    from vllm.distributed.device_communicators import shm_broadcast

    cls = shm_broadcast.SpinCondition
    original_init, original_wait = cls.__init__, cls.wait
    original_record_read, original_notify = cls.record_read, cls.notify
    if getattr(original_init, _SENTINEL, False):
        return None

    @functools.wraps(original_init)
    def __init__(self, is_reader, context, notify_address, *args, **kwargs):
        original_init(self, is_reader, context, notify_address, *args, **kwargs)
        self._qwen3vl_spin_s = busy_loop_s()
        self._qwen3vl_nap_s = float(os.environ.get(NAP_ENV) or NAP_S)
        self._qwen3vl_nap_max_s = max(self._qwen3vl_nap_s, float(os.environ.get(NAP_MAX_ENV) or NAP_MAX_S))
        self._qwen3vl_nap_growth = float(os.environ.get(NAP_GROWTH_ENV) or NAP_GROWTH)
        self._qwen3vl_wake = _wake_word(is_reader, notify_address, self._qwen3vl_spin_s)
        self._qwen3vl_seen = self._qwen3vl_wake.seq() if self._qwen3vl_wake is not None else 0
        self._qwen3vl_skip = self._qwen3vl_wake is not None and skip_enabled()
        self._qwen3vl_wait_from = None  # when this reader first found the ring empty since its read
        self._qwen3vl_long = 0  # its waits in a row that outlasted the spin
        self._qwen3vl_after_write = after_write_enabled()

    @functools.wraps(original_wait)
    def wait(self, timeout_ms=None):
        spin = getattr(self, "_qwen3vl_spin_s", None)
        if spin is None or not self.is_reader:
            return original_wait(self, timeout_ms)
        now = time.monotonic()
        since = now - self.last_read
        if getattr(self, "_qwen3vl_after_write", False):  # the window opens at a read or this process's write
            spin_since = now - max(self.last_read, _last_write[0])
        else:
            spin_since = since
        skip = False
        if getattr(self, "_qwen3vl_skip", False):
            if self._qwen3vl_wait_from is None:
                self._qwen3vl_wait_from = now
            skip = self._qwen3vl_long >= SKIP_AFTER
        if spin_since <= spin and not skip:
            return shm_broadcast.sched_yield()
        if since <= self.busy_loop_s:  # vLLM's busy window: sleep on the wake word, or nap
            word = getattr(self, "_qwen3vl_wake", None)
            if word is not None:
                try:
                    word.sleep(self._qwen3vl_seen, min(WAKE_TIMEOUT_S, self.busy_loop_s - since + 1e-4))
                except Exception as exc:  # noqa: BLE001 - speed only: never stop a reader for it
                    logger.warning("step queue wake word failed (%s); this reader naps from now on", exc)
                    self._qwen3vl_wake = None
                    return None
                self._qwen3vl_seen = word.seq()  # before the caller's next look at the ring
            else:
                _sleep(nap_s(since, self._qwen3vl_nap_s, self._qwen3vl_nap_max_s, self._qwen3vl_nap_growth))
            return None
        return original_wait(self, timeout_ms)  # vLLM's idle mode: its notification socket

    @functools.wraps(original_record_read)
    def record_read(self):
        original_record_read(self)
        if getattr(self, "_qwen3vl_skip", False):
            start = self._qwen3vl_wait_from  # None: the step was there when the reader looked
            waited = 0.0 if start is None else self.last_read - start
            self._qwen3vl_long = self._qwen3vl_long + 1 if waited > self._qwen3vl_spin_s else 0
            self._qwen3vl_wait_from = None
        word = getattr(self, "_qwen3vl_wake", None)
        if word is not None:
            self._qwen3vl_seen = word.seq()

    @functools.wraps(original_notify)
    def notify(self):
        word = getattr(self, "_qwen3vl_wake", None)
        _last_write[0] = time.monotonic()
        if word is not None:
            word.bump()
        return original_notify(self)

    setattr(__init__, _SENTINEL, True)
    cls.__init__, cls.wait, cls.record_read, cls.notify = __init__, wait, record_read, notify
    return "shm_broadcast.SpinCondition.__init__, .wait, .record_read, .notify"


def _switch(name: str, on: str, off: str, environ=None) -> bool:
    """A 0/1 setting, on when unset (each is an A/B and an escape hatch); anything else is
    refused by name, with what each value does."""
    raw = (environ if environ is not None else os.environ).get(name, "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{name}={raw!r}: use 1 ({on}) or 0 ({off})")
    return raw == "1"


def wake_enabled(environ=None) -> bool:
    """``WAKE_ENV``: past the spin, readers sleep on the wake word; 0: they nap as before."""
    return _switch(WAKE_ENV, "sleep on the wake word", "nap", environ)


def after_write_enabled(environ=None) -> bool:
    """``AFTER_WRITE_ENV``: a reader's spin window also opens when its process writes to a step
    queue; 0: only at its last read."""
    return _switch(AFTER_WRITE_ENV, "spin after this process writes", "only after a read", environ)


def skip_enabled(environ=None) -> bool:
    """``SKIP_ENV``: a reader whose last ``SKIP_AFTER`` waits each outlasted its spin sleeps on
    the wake word at once; 0: it always spins first."""
    return _switch(SKIP_ENV, "skip the spin after long waits", "always spin", environ)


def _wake_word(is_reader: bool, address: str, spin_s: float | None):
    """The writer makes the queue's wake word, its readers find it; None where ``ENV`` is unset
    (vLLM's own wait), ``WAKE_ENV=0``, or no word can be had (the readers nap)."""
    from qwen3vl_vllm.serving import shm_wake

    if spin_s is None or not wake_enabled():
        return None
    try:
        return shm_wake.WakeWord.attach(address) if is_reader else shm_wake.WakeWord.create(address)
    except OSError as exc:
        logger.warning("step queue wake word for %s unavailable (%s); its readers nap instead", address, exc)
        return None
