"""A futex word beside each step queue, so a waiting reader sleeps until the next write.

Why: past its short spin (``shm_spin``), a reader of vLLM's shared-memory step queue used to nap
and look again, so each hand-off after an idle moment waited for the rest of a nap. Measured
between two processes on this 2-core machine (``benchmarks/handoff.py``): a reader napping as
``shm_spin`` naps saw a write 259 us after it was made when writes came 8 ms apart, one asleep on
this word 141 us, a spinning one 33 us (medians, ``2026-12-04-wake/handoff.json``). At one request at a time each request makes two such
hand-offs (the step to the worker, its result back to the engine core).

The word lives in a shared-memory page of its own (``/dev/shm``), named from the queue's
notification address (which the writer and its readers share through vLLM's handle) and the
writer's pid. The writer makes it with the queue and removes it when the queue goes; a killed
server leaves its pages (and vLLM's own ring buffers) behind, so each new word first removes the
pages of creators that are gone. A reader that finds none (a writer in a process without the
plugin) naps as before.
Layout: ``seq`` (u32, the futex word, +1 per write) and ``sleepers`` (u32, set by a reader before
it sleeps, cleared by the writer when it wakes them).

No write is missed: the reader notes ``seq`` when it reads (and after each sleep), before it
checks the ring; it sleeps only while ``seq`` is still that value (the kernel compares it), after
setting ``sleepers`` and a fence; the writer bumps ``seq`` after the ring's written flag, then
fences and reads ``sleepers``. One of the two sees the other's store. A sleep is also bounded
(``shm_spin``'s timeout), so a reader never depends on the wake to make progress.

Example::

    word = WakeWord.create("ipc:///tmp/some-queue")      # the writer's side
    reader = WakeWord.attach("ipc:///tmp/some-queue")    # a reader's, in any process
    seen = reader.seq()
    word.bump()                                          # after each write
    assert reader.sleep(seen, 1.0) == "changed"          # returns at once: a write came
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import platform
import threading
import weakref

DIR = "/dev/shm"
PREFIX = "qwen3vl-wake-"
SIZE = mmap.PAGESIZE
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not FUTEX_PRIVATE): the word is in a shared mapping
_WAKE_ALL = 2**31 - 1
_fence_lock = threading.Lock()


def _fence() -> None:
    """A full barrier (a lock's acquire and release), as vLLM's ``memory_fence``."""
    with _fence_lock:
        pass


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.syscall


def available() -> bool:
    """Linux on a CPU whose futex syscall number is known, with a ``/dev/shm``."""
    return _SYS_FUTEX is not None and os.path.isdir(DIR)


def _stem(address: str) -> str:
    """The names of a queue's word start with this; the creator's pid ends them."""
    return PREFIX + hashlib.blake2b(address.encode(), digest_size=12).hexdigest() + "-"


def find(address: str) -> str | None:
    """The path of ``address``'s word, or None when no writer made one."""
    stem = _stem(address)
    names = [n for n in os.listdir(DIR) if n.startswith(stem)]
    return os.path.join(DIR, names[0]) if names else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep() -> list[str]:
    """Remove the words of creators that are gone (a killed server's tree takes its resource
    tracker with it, and nothing else removes them). The names removed."""
    gone = []
    for name in os.listdir(DIR):
        if not name.startswith(PREFIX):
            continue
        pid = name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(DIR, name))
                gone.append(name)
            except OSError:
                pass
    return gone


class WakeWord:
    """The shared ``seq``/``sleepers`` pair of one queue. ``create`` on the writer's side (it
    removes its page when collected or at exit), ``attach`` on a reader's (None when absent)."""

    def __init__(self, buf, path: str | None, owner=None):
        self._buf = buf
        self._seq = ctypes.c_uint32.from_buffer(buf, 0)
        self._sleepers = ctypes.c_uint32.from_buffer(buf, 4)
        self._addr = ctypes.addressof(self._seq)
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, owner) if owner is not None else None

    @classmethod
    def create(cls, address: str) -> WakeWord | None:
        """The writer's side: a POSIX shared-memory page named from ``address`` and this
        process's pid, after removing the pages of creators that are gone (``sweep``)."""
        if not available():
            return None
        from multiprocessing import shared_memory

        sweep()
        shm = shared_memory.SharedMemory(name=f"{_stem(address)}{os.getpid()}", create=True, size=SIZE)
        return cls(shm.buf, os.path.join(DIR, shm.name.lstrip("/")), owner=shm)

    @classmethod
    def attach(cls, address: str) -> WakeWord | None:
        path = find(address) if available() else None
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        return cls(mm, None)

    def seq(self) -> int:
        return self._seq.value

    def bump(self) -> bool:
        """After a write: the next ``seq``, and the sleepers woken (True) if there are any."""
        self._seq.value = (self._seq.value + 1) & 0xFFFFFFFF
        _fence()
        if not self._sleepers.value:
            return False
        self._sleepers.value = 0
        _syscall()(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(self._addr), ctypes.c_int(_FUTEX_WAKE),
                   ctypes.c_int(_WAKE_ALL), None, None, ctypes.c_int(0))
        return True

    def sleep(self, seen: int, timeout_s: float) -> str:
        """Sleep while ``seq`` is ``seen``, at most ``timeout_s``: "woken", "changed" (a write
        came before the sleep began), "timeout" or "interrupted" (a signal)."""
        self._sleepers.value = 1
        _fence()
        if self._seq.value != seen:
            return "changed"
        ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
        rc = _syscall()(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(self._addr), ctypes.c_int(_FUTEX_WAIT),
                        ctypes.c_uint32(seen), ctypes.byref(ts), None, ctypes.c_int(0))
        if rc == 0:
            return "woken"
        err = ctypes.get_errno()
        return {errno.EAGAIN: "changed", errno.ETIMEDOUT: "timeout", errno.EINTR: "interrupted"}.get(
            err, f"errno {err}")

    def close(self) -> None:
        """Unmap (and, on the writer's side, remove the segment)."""
        del self._seq, self._sleepers
        if self._finalizer is not None:
            self._buf = None
            self._finalizer()
        else:
            self._buf.close()


def _remove(shm) -> None:
    """Close and unlink the writer's segment (also its finalizer: at collection or exit)."""
    try:
        shm.close()
    except BufferError:  # a word still refers to it: the process is ending, unlink anyway
        pass
    try:
        shm.unlink()
    except OSError:
        pass
