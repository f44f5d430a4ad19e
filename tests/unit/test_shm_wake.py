"""The step queue's wake word (serving/shm_wake) and the readers that sleep on it (shm_spin):
a write wakes a sleeping reader, in this process and across processes, and vLLM's own
SpinCondition, patched, wires writer and readers to one word. No timing is asserted: each
check reads what the sleep returned ("woken", "changed", "timeout")."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from qwen3vl_vllm.serving import shm_spin, shm_wake

pytestmark = pytest.mark.skipif(not shm_wake.available(), reason="the wake word needs Linux futexes and /dev/shm")


@pytest.fixture
def address():
    return f"ipc:///tmp/qwen3vl-test-{uuid.uuid4().hex}"


def _sleeping(word, timeout=30.0):
    """Wait (bounded) until a reader has marked itself asleep on ``word``."""
    end = time.monotonic() + timeout
    while not word._sleepers.value:
        if time.monotonic() > end:
            raise AssertionError("the reader never went to sleep")
        time.sleep(0.001)
    time.sleep(0.05)  # past the flag, into the futex wait


def test_a_write_wakes_a_sleeping_reader_in_another_thread(address):
    writer = shm_wake.WakeWord.create(address)
    reader = shm_wake.WakeWord.attach(address)
    try:
        assert os.path.exists(writer.path) and reader is not None and reader.path is None
        seen, got = reader.seq(), []
        t = threading.Thread(target=lambda: got.append(reader.sleep(seen, 30.0)))
        t.start()
        _sleeping(writer)
        assert writer.bump() is True  # it had a sleeper to wake
        t.join(30)
        assert got == ["woken"] and reader.seq() == seen + 1
        assert writer._sleepers.value == 0 and writer.bump() is False  # nobody asleep: no syscall
        assert reader.sleep(seen, 30.0) == "changed"  # writes since `seen`: no sleep at all
        assert reader.sleep(reader.seq(), 0.01) == "timeout"
        writer._seq.value = 2**32 - 1  # the word wraps: a value past a C int still sleeps, then wraps to 0
        assert reader.sleep(reader.seq(), 0.01) == "timeout"
        writer.bump()
        assert reader.seq() == 0 and reader.sleep(2**32 - 1, 30.0) == "changed"
    finally:
        reader.close()
        writer.close()
    assert shm_wake.find(address) is None  # the writer's side removes its page


def _child(address, conn):
    word = shm_wake.WakeWord.attach(address)
    conn.send(word.sleep(word.seq(), 60.0) if word else "absent")


def test_a_write_wakes_a_reader_in_another_process(address):
    writer = shm_wake.WakeWord.create(address)
    try:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(address, child))
        proc.start()
        _sleeping(writer, timeout=120)
        writer.bump()
        assert parent.poll(60) and parent.recv() == "woken"
        proc.join(60)
        assert proc.exitcode == 0
    finally:
        writer.close()


def test_no_word_without_its_writer(address):
    assert shm_wake.WakeWord.attach(address) is None


def test_a_new_word_removes_the_pages_of_killed_writers(address):
    """A killed server's page (its creator's pid gone) is removed by the next create; a live
    creator's page is kept."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    stale = os.path.join(shm_wake.DIR, f"{shm_wake._stem(address + '-old')}{dead}")
    live = os.path.join(shm_wake.DIR, f"{shm_wake._stem(address + '-live')}{os.getppid()}")
    for path in (stale, live):
        with open(path, "wb") as f:
            f.write(bytes(shm_wake.SIZE))
    try:
        writer = shm_wake.WakeWord.create(address)
        assert not os.path.exists(stale) and os.path.exists(live)
        assert writer.path.endswith(f"-{os.getpid()}") and shm_wake.find(address) == writer.path
        writer.close()
    finally:
        for path in (stale, live):
            if os.path.exists(path):
                os.unlink(path)


def test_the_wake_setting_is_refused_by_name():
    assert shm_spin.wake_enabled({}) and shm_spin.wake_enabled({shm_spin.WAKE_ENV: "1"})
    assert not shm_spin.wake_enabled({shm_spin.WAKE_ENV: "0"})
    with pytest.raises(ValueError, match="QWEN3VL_SHM_WAKE='yes'"):
        shm_spin.wake_enabled({shm_spin.WAKE_ENV: "yes"})
    assert shm_spin.skip_enabled({}) and not shm_spin.skip_enabled({shm_spin.SKIP_ENV: "0"})
    with pytest.raises(ValueError, match="QWEN3VL_SHM_SKIP_SPIN='on'"):
        shm_spin.skip_enabled({shm_spin.SKIP_ENV: "on"})


def test_vllms_spin_condition_writer_wakes_its_reader(address):
    """vLLM's SpinCondition, patched, in a process of its own: the writer makes the word, the
    reader finds it, notify() bumps it, and a reader inside vLLM's busy window but past the spin
    sleeps on it until the next notify; with QWEN3VL_SHM_WAKE=0 the reader has no word (naps)."""
    code = textwrap.dedent(f"""
        import json, os, threading, time, zmq
        from vllm.distributed.device_communicators import shm_broadcast
        from qwen3vl_vllm.serving import shm_spin, shm_wake
        shm_spin.patch()
        got = []
        real_sleep = shm_wake.WakeWord.sleep
        shm_wake.WakeWord.sleep = lambda self, seen, t: got.append(real_sleep(self, seen, 30.0)) or got[-1]
        ctx = zmq.Context()
        os.environ[shm_spin.ENV] = "0.002"
        writer = shm_broadcast.SpinCondition(False, ctx, {address!r})
        reader = shm_broadcast.SpinCondition(True, ctx, {address!r})
        out = [reader._qwen3vl_wake is not None, shm_wake.find({address!r}) is not None]
        writer.notify()
        reader.record_read()
        out += [reader._qwen3vl_seen, reader._qwen3vl_wake.seq()]
        reader.last_read = time.monotonic() - 0.5  # in vLLM's 1 s window, past the 2 ms spin
        shm_spin._last_write[0] = 0.0  # writer and reader share this process here (in vLLM: two); no write opens the spin
        t = threading.Thread(target=reader.wait, kwargs={{"timeout_ms": 1000}})
        t.start()
        while not reader._qwen3vl_wake._sleepers.value:
            time.sleep(0.001)
        time.sleep(0.05)
        writer.notify()
        t.join(30)
        out += [got, reader._qwen3vl_seen]
        os.environ[shm_spin.WAKE_ENV] = "0"
        out.append(shm_broadcast.SpinCondition(True, ctx, {address!r})._qwen3vl_wake)
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k not in (shm_spin.ENV, shm_spin.WAKE_ENV)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == [True, True, 1, 1, ["woken"], 2, None]
    assert shm_wake.find(address) is None  # removed when the writer's process ended


def test_handoff_benchmark_reports_every_way_and_gap(tmp_path):
    """benchmarks/handoff.py's structure (two writes per way and gap; no speed is asserted)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    import handoff

    assert handoff.main(["--rounds", "1", "--writes", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "handoff.json").read_text())
    assert set(res["rows"]) == {f"{w} gap={g * 1000:g}ms" for w in handoff.WAYS for g in handoff.GAPS}
    assert all(r["rounds"] == 1 and 0 < r["min_us"] <= r["median_us"] <= r["max_us"] for r in res["rows"].values())


def test_a_failing_word_leaves_the_reader_napping(monkeypatch):
    """Speed only: a sleep that raises drops the word (logged) and the reader naps from then on."""
    import types

    from vllm.distributed.device_communicators import shm_broadcast

    shm_spin.patch()
    naps = []
    monkeypatch.setattr(shm_spin, "_sleep", naps.append)

    class Broken:
        def sleep(self, seen, timeout):
            raise OSError("no futex here")

    reader = types.SimpleNamespace(is_reader=True, busy_loop_s=1, last_read=time.monotonic() - 0.5,
                                   _qwen3vl_spin_s=0.002, _qwen3vl_nap_s=shm_spin.NAP_S,
                                   _qwen3vl_nap_max_s=shm_spin.NAP_MAX_S, _qwen3vl_nap_growth=shm_spin.NAP_GROWTH,
                                   _qwen3vl_wake=Broken(), _qwen3vl_seen=0)
    shm_broadcast.SpinCondition.wait(reader, timeout_ms=7)
    assert reader._qwen3vl_wake is None and naps == []
    shm_broadcast.SpinCondition.wait(reader, timeout_ms=7)
    assert naps == [shm_spin.NAP_MAX_S]


class _Word:
    """A wake word that records the sleeps asked of it (and returns at once)."""

    def __init__(self):
        self.sleeps = []

    def sleep(self, seen, timeout):
        self.sleeps.append(timeout)
        return "timeout"

    def seq(self):
        return 0


@pytest.mark.parametrize("skip", [True, False])
def test_a_reader_whose_waits_outlast_the_spin_stops_spinning(monkeypatch, skip):
    """After SKIP_AFTER waits in a row longer than the spin, a reader inside its spin window
    sleeps on the word instead of spinning; one short wait (or a read with no wait at all)
    brings the spin back. With QWEN3VL_SHM_SKIP_SPIN=0 it always spins first."""
    import types

    from vllm.distributed.device_communicators import shm_broadcast

    shm_spin.patch()
    spins = []
    monkeypatch.setattr(shm_broadcast, "sched_yield", lambda: spins.append(1))
    word = _Word()
    reader = types.SimpleNamespace(is_reader=True, busy_loop_s=1, last_read=time.monotonic(),
                                   _qwen3vl_spin_s=0.002, _qwen3vl_wake=word, _qwen3vl_seen=0,
                                   _qwen3vl_skip=skip, _qwen3vl_wait_from=None, _qwen3vl_long=0,
                                   last_notify_poll=float("inf"))  # vLLM 0.33's record_read: no zmq poll
    cls = shm_broadcast.SpinCondition

    def one_wait(waited_s):
        """A read right after the last one, found empty, and read ``waited_s`` later."""
        reader.last_read = time.monotonic()
        before = len(spins), len(word.sleeps)
        cls.wait(reader, timeout_ms=1000)
        if skip:  # the wait noted when it began; the read is then made to come waited_s after it
            assert reader._qwen3vl_wait_from is not None
            reader._qwen3vl_wait_from = time.monotonic() - waited_s
        cls.record_read(reader)
        return ("spin" if len(spins) > before[0] else "") + ("sleep" if len(word.sleeps) > before[1] else "")

    got = [one_wait(0.010) for _ in range(shm_spin.SKIP_AFTER)]  # two long waits: still spun
    got += [one_wait(0.0001)]  # the third slept at once; its wait was short
    got += [one_wait(0.010)]  # so the next spun again
    if not skip:
        assert got == ["spin"] * 4
        return
    assert got == ["spin", "spin", "sleep", "spin"]
    got = [one_wait(0.010), one_wait(0.010)]
    reader._qwen3vl_wait_from = None
    cls.record_read(reader)  # a read that found its step already written: a short wait
    assert got == ["spin", "sleep"] and reader._qwen3vl_long == 0
    assert word.sleeps and all(0 < t <= shm_spin.WAKE_TIMEOUT_S for t in word.sleeps)


@pytest.mark.parametrize("after_write", [True, False])
def test_a_write_by_the_readers_process_opens_its_spin_window(monkeypatch, after_write):
    """A reader whose last read is long past sleeps on the word; once its own process has
    written to a step queue (the engine core handing a step on), it spins for the answer, for
    the spin's length from that write. With QWEN3VL_SHM_SPIN_AFTER_WRITE=0 only a read opens
    the window."""
    import types

    from vllm.distributed.device_communicators import shm_broadcast

    shm_spin.patch()
    spins = []
    monkeypatch.setattr(shm_broadcast, "sched_yield", lambda: spins.append(1))
    monkeypatch.setattr(shm_spin, "_last_write", [0.0])
    word = _Word()
    reader = types.SimpleNamespace(is_reader=True, busy_loop_s=1, last_read=time.monotonic() - 0.5,
                                   _qwen3vl_spin_s=0.002, _qwen3vl_wake=word, _qwen3vl_seen=0,
                                   _qwen3vl_skip=False, _qwen3vl_after_write=after_write)
    sent = []
    writer = types.SimpleNamespace(is_reader=False, _qwen3vl_wake=None,
                                   local_notify_socket=types.SimpleNamespace(send=sent.append))
    cls = shm_broadcast.SpinCondition

    def looks():
        before = len(spins), len(word.sleeps)
        cls.wait(reader, timeout_ms=1000)
        return ("spin" if len(spins) > before[0] else "") + ("sleep" if len(word.sleeps) > before[1] else "")

    assert looks() == "sleep"  # 0.5 s after its read, no write: past the spin
    cls.notify(writer)  # this process writes a step (and vLLM's own notify still runs)
    assert sent == [b"\x00"] and time.monotonic() - shm_spin._last_write[0] < 0.5
    assert looks() == ("spin" if after_write else "sleep")
    shm_spin._last_write[0] = time.monotonic() - 0.003  # the write was longer ago than the spin
    assert looks() == "sleep"
    assert shm_spin.after_write_enabled({}) and not shm_spin.after_write_enabled({shm_spin.AFTER_WRITE_ENV: "0"})
    with pytest.raises(ValueError, match="QWEN3VL_SHM_SPIN_AFTER_WRITE='yes'"):
        shm_spin.after_write_enabled({shm_spin.AFTER_WRITE_ENV: "yes"})
