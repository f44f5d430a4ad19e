"""A CPU-time sampler for every Python process of a benchmark server (benchmarks/frontend.py).

Why not py-spy: ``py-spy --native`` needs ptrace rights that a sandbox or a container often
refuses, and cProfile sees one thread and distorts short calls. This samples instead, from inside
each process, with no rights beyond reading ``/proc/self``:

- every ``QWEN3VL_SAMPLE_MS`` (default 5) ms, for each thread of the process, the CPU time the
  kernel charged it since the last sample (the thread's CPU clock, nanoseconds; the same count
  as ``/proc/self/task/<tid>/schedstat``, which is the fallback);
- that CPU time goes to the thread's current Python stack (``sys._current_frames``), or, for a
  thread with no Python frames (torch's intra-op pool, tokenizers' Rust threads), to its name.

So the parts add up by construction to what the kernel charged each thread, and native code is
charged to the Python call that entered it (``Image.resize``, the HF processor, ``blake3``).

It is active only when ``QWEN3VL_SAMPLE_DIR`` names a folder (benchmarks/frontend.py sets it on
``PYTHONPATH`` for the servers it profiles; nothing of the package imports it). The folder's
``label`` file says what is being measured: while it holds a label, samples accumulate; when it
changes, each process writes ``<dir>/<label>/<pid>.json`` (stacks with their CPU nanoseconds)
and starts afresh. It restarts in forked children (vLLM's engine core) and starts in spawned ones.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("QWEN3VL_SAMPLE_DIR")


def _start() -> None:
    import json
    import sys
    import threading
    import time

    every = float(os.environ.get("QWEN3VL_SAMPLE_MS", "5")) / 1000
    # the thread that starts the sampler (the main thread; in a forked child, the thread that
    # forked, whose native id threading may not have refreshed yet): mapped by hand
    starter = (threading.get_native_id(), threading.get_ident())
    label_path = os.path.join(_DIR, "label")
    me = {"tid": None}

    def cpu_ns(tid: int) -> int | None:
        # the thread's CPU clock (Linux: clock id (~tid << 3) | 6, CPUCLOCK_SCHED per thread,
        # the same sum_exec_runtime as schedstat's first field): one system call, ~1 us here,
        # against ~23 us to open and read schedstat; a thread that is gone reads EINVAL
        try:
            return time.clock_gettime_ns(((~tid) << 3) | 6)
        except (OSError, OverflowError):
            pass
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def comm(tid: int) -> str:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                return f.read().strip()
        except OSError:
            return "?"

    names: dict[int, str] = {}  # a native thread's name, read once

    def stack(frame) -> tuple:
        # code objects, not strings: a sample costs a pointer walk per thread (names are made
        # when the file is written), so the sampler perturbs less what it measures
        out = []
        while frame is not None and len(out) < 80:
            out.append(frame.f_code)
            frame = frame.f_back
        return tuple(reversed(out))  # root first

    def run() -> None:
        me["tid"] = threading.get_native_id()
        label, stacks, last, wall0 = None, {}, {}, time.monotonic()
        checked = 0.0
        while True:
            now = time.monotonic()
            if now - checked > 0.05:
                checked = now
                try:
                    with open(label_path) as f:
                        new = f.read().strip() or None
                except OSError:
                    new = None
                if new != label:
                    if label is not None and stacks:
                        _write(label, stacks, time.monotonic() - wall0)
                    label, stacks, wall0 = new, {}, time.monotonic()
                    last = {}
            if label is None:
                time.sleep(0.05)
                continue
            idents = {t.native_id: t.ident for t in threading.enumerate() if t.native_id}
            idents[starter[0]] = starter[1]
            # walked at once, before this thread lets go of the GIL (the reads below do): a frame
            # whose caller moves on loses its f_back (a generator under ``sum`` then looks like
            # a root), so a stack read later is cut short
            frames = {ident: stack(frame) for ident, frame in sys._current_frames().items()}
            try:
                tids = [int(t) for t in os.listdir("/proc/self/task")]
            except OSError:
                tids = []
            for tid in tids:
                ns = cpu_ns(tid)
                if ns is None:
                    continue
                prev = last.get(tid)
                last[tid] = ns
                if prev is None or ns <= prev:
                    continue
                if tid == me["tid"]:
                    key = ("<sampler>",)
                else:
                    key = frames.get(idents.get(tid))
                    if not key:
                        if tid not in names:
                            names[tid] = f"<native thread {comm(tid)}>"
                        key = (names[tid],)
                stacks[key] = stacks.get(key, 0) + (ns - prev)
            time.sleep(every)

    def _write(label: str, stacks: dict, wall: float) -> None:
        folder = os.path.join(_DIR, label)
        os.makedirs(folder, exist_ok=True)
        try:
            with open("/proc/self/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        data = {"pid": os.getpid(), "ppid": os.getppid(), "comm": comm(os.getpid()), "cmdline": cmd,
                "wall_s": wall, "stacks": [[[_name(c) for c in k], v] for k, v in stacks.items()]}
        tmp = os.path.join(folder, f".{os.getpid()}.json")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, os.path.join(folder, f"{os.getpid()}.json"))

    def _name(code) -> str:
        return code if isinstance(code, str) else f"{code.co_filename}:{code.co_name}"

    threading.Thread(target=run, name="qwen3vl-sampler", daemon=True).start()


if _DIR:
    try:
        _start()
        os.register_at_fork(after_in_child=_start)
    except Exception as e:  # a sampler must never stop the process it measures
        import sys

        print(f"qwen3vl sampler not started: {e}", file=sys.stderr)
