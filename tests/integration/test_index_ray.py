"""The ``ray`` backend on a local Ray cluster with two actors on the tiny checkpoint: an actor
SIGKILLed mid-job is restarted by Ray and the job goes on; then the driver's whole process
group is SIGKILLed, and the same command resumes it to the uninterrupted local run's vectors.

CI's second step (``./launch.sh test-long``, marker ``ray``): two engines and a Ray cluster
take longer than the suite's budget allows."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from index_corpus import table_corpus
from test_index import CHUNK, COSINE, cosine, index_cmd, run, shards

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ACTOR_TITLE = "MapBatches(ChunkActor)"  # Ray names actor processes after the map operator


def _done(out: Path) -> int:
    d = out / "done"
    return len(list(d.glob("*.json"))) if d.exists() else 0


def _actors() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if ACTOR_TITLE in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _dead_within(p: psutil.Process, timeout: float) -> bool:
    """Whether a SIGKILLed process is dead within ``timeout``: gone, or a zombie its parent
    (Ray's raylet) has not reaped yet. Not at once: a killed process with a large address space
    shows as running while the kernel tears it down (CI, a loaded 2-core machine: seen both
    ways)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill_cluster(tmp: Path) -> None:
    """Every process of the Ray cluster this test started (its temp dir is in their command
    lines), so nothing outlives the test."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(tmp) in " ".join(p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _wait(cond, what: str, proc, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the job ended (rc={proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return table_corpus(tmp_path_factory.mktemp("ray-table"), n_photos=120)


def test_ray_actor_killed_then_driver_killed_then_resumed(corpus, embedding_ckpt, tmp_path):
    ray_tmp = Path(f"/tmp/ray-q3v-{os.getpid()}")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    out = tmp_path / "ray"
    cmd = index_cmd(corpus["path"], embedding_ckpt, out, "--backend", "ray", "--actors", "2",
                    "--actor-cpus", "1")
    total = -(-corpus["n_rows"] // CHUNK)
    log = open(tmp_path / "ray-1.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        _wait(lambda: _done(out) >= 1, "a first chunk", proc)
        actors = _actors()
        assert len(actors) == 2, f"expected 2 actor processes, found {len(actors)}"
        victim = actors[0]
        victim.kill()
        at_kill = _done(out)
        _wait(lambda: _done(out) >= at_kill + 2, "two more chunks after the actor was killed", proc)
        assert _dead_within(victim, 60), f"the killed actor {victim.pid} still runs 60 s later"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()
        _kill_cluster(ray_tmp)
    killed = _done(out)
    assert 3 <= killed < total, f"{killed} of {total} chunks done when the driver was killed"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}
    try:
        proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    finally:
        _kill_cluster(ray_tmp)
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    n, good = corpus["n_rows"], corpus["good"]
    assert f"indexed {n} inputs: {len(good)} vectors + {n - len(good)} errors = {n} (ok)" in proc2.stdout
    assert f"({killed} from earlier runs, {total - killed} now)" in proc2.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json") if p.name in before} == before

    whole = tmp_path / "local"
    run(index_cmd(corpus["path"], embedding_ckpt, whole))
    a_vec, a_err, _ = shards(whole)
    b_vec, b_err, _ = shards(out)
    assert sorted(a_vec) == sorted(b_vec) and a_err == b_err
    worst = min(cosine(a_vec[i], b_vec[i]) for i in a_vec)
    assert worst >= COSINE, worst
