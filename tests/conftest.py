"""Shared fixtures. Expensive things (checkpoints, servers, engines) are session-scoped.

vLLM engines never run inside the pytest process: offline runs happen in a worker subprocess
(tests/integration/offline_worker.py) and servers are child process groups stopped by
``ServerProcess.stop()``. An exit-time abort of vLLM (SPEC §4) therefore cannot change pytest's
exit code: the worker writes its results before exiting (and exits through the exit guard), and a
test only reads its result file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/cases.py

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(CACHE / "vllm"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SERVER_ARGS = ["--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.25",
               "--max-num-seqs", "16"]
FUZZ_ENV = "QWEN3VL_FUZZ_CASES"  # where the offline workers find the fuzzer's inputs


_DESELECTED: list[str] = []


def pytest_deselected(items):
    _DESELECTED.extend(i.nodeid for i in items if i.get_closest_marker("ray") or i.get_closest_marker("bench"))


def pytest_terminal_summary(terminalreporter):
    """Say by name what the default marker expression left out, and where it runs instead."""
    if _DESELECTED:
        terminalreporter.write_sep("-", "left out by -m 'not ray and not bench' (CI's second step: ./launch.sh test-long)")
        for nodeid in _DESELECTED:
            terminalreporter.write_line(f"DESELECTED {nodeid}")


def pytest_addoption(parser):
    from fuzz_inputs import DEFAULT_N, DEFAULT_SEED

    parser.addoption("--fuzz-seed", type=int, default=DEFAULT_SEED,
                     help="seed of the differential fuzzer's inputs (tests/fuzz_inputs.py)")
    parser.addoption("--fuzz-n", type=int, default=DEFAULT_N,
                     help="how many inputs the differential fuzzer generates")


@pytest.fixture(scope="session")
def fuzz(request, tmp_path_factory):
    """The fuzzer's inputs, made once per session and pickled for the offline workers."""
    import pickle
    import time
    import types

    from fuzz_inputs import embedding_cases, rerank_cases, split

    seed, n = request.config.getoption("--fuzz-seed"), request.config.getoption("--fuzz-n")
    root = tmp_path_factory.mktemp("fuzz")
    t0 = time.monotonic()
    n_embed, n_rerank = split(n)
    made = types.SimpleNamespace(seed=seed, n=n, root=root,
                                 embedding=embedding_cases(seed, n_embed, root / "embedding"),
                                 rerank=rerank_cases(seed, n_rerank, root / "rerank"))
    made.seconds = time.monotonic() - t0
    made.pickle = root / "cases.pkl"
    made.pickle.write_bytes(pickle.dumps({"embedding": made.embedding, "rerank": made.rerank}))
    return made


@pytest.fixture(scope="session")
def embedding_ckpt() -> Path:
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    return ensure_checkpoint(CACHE / "checkpoints", kind="embedding", size="tiny")


@pytest.fixture(scope="session")
def instruct_ckpt() -> Path:
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    return ensure_checkpoint(CACHE / "checkpoints", kind="instruct", size="tiny")


@pytest.fixture(scope="session")
def reference_embedder(embedding_ckpt):
    from qwen3vl_vllm.testing.reference import ReferenceEmbedder

    return ReferenceEmbedder(str(embedding_ckpt))


@pytest.fixture(scope="session")
def embedding_server(embedding_ckpt):
    from qwen3vl_vllm.ops.launcher import ServerProcess

    from cases import NAMED_INSTRUCTIONS
    from qwen3vl_vllm.ops.launcher import vllm_env

    env = {**vllm_env(), "QWEN3VL_INSTRUCTIONS": json.dumps(NAMED_INSTRUCTIONS)}
    server = ServerProcess(embedding_ckpt, extra_args=SERVER_ARGS, env=env,
                           log_path=CACHE / "logs" / "test-embedding-server.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def reranker_ckpt() -> Path:
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    return ensure_checkpoint(CACHE / "checkpoints", kind="reranker", size="tiny")


@pytest.fixture(scope="session")
def reference_reranker(reranker_ckpt):
    from qwen3vl_vllm.testing.reference import ReferenceReranker

    return ReferenceReranker(str(reranker_ckpt))


@pytest.fixture(scope="session")
def reranker_server(reranker_ckpt):
    from qwen3vl_vllm.ops.launcher import ServerProcess

    server = ServerProcess(reranker_ckpt, extra_args=SERVER_ARGS,
                           log_path=CACHE / "logs" / "test-reranker-server.log")
    with server:
        yield server


# ---- offline engines: each runs once per session in a worker subprocess (see module docstring)

INTEGRATION = Path(__file__).resolve().parent / "integration"


def _run_worker(script: str, ckpt, tmp: Path, out: Path, fuzz=None) -> None:
    """Run an offline worker (tests/integration/*_worker.py); it writes ``out`` before exiting,
    through the exit guard, so its own exit code must be 0 too. With ``fuzz`` it also runs the
    fuzzer's inputs (no second engine start)."""
    env = {**os.environ, **({FUZZ_ENV: str(fuzz.pickle)} if fuzz is not None else {})}
    proc = subprocess.run([sys.executable, str(INTEGRATION / script), str(ckpt), str(out),
                           str(tmp / "media")], capture_output=True, text=True, timeout=900, env=env)
    assert out.exists(), f"{script} wrote nothing (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="session")
def offline_results(embedding_ckpt, tmp_path_factory, fuzz):
    import numpy as np

    tmp = tmp_path_factory.mktemp("offline")
    out = tmp / "results.npz"
    _run_worker("offline_worker.py", embedding_ckpt, tmp, out, fuzz)
    return dict(np.load(out)), json.loads(out.with_suffix(".json").read_text()), tmp / "media"


@pytest.fixture(scope="session")
def offline_rerank(reranker_ckpt, tmp_path_factory, fuzz):
    tmp = tmp_path_factory.mktemp("offline-rerank")
    out = tmp / "results.json"
    _run_worker("offline_rerank_worker.py", reranker_ckpt, tmp, out, fuzz)
    return json.loads(out.read_text()), tmp / "media"


@pytest.fixture(scope="session")
def long_videos() -> dict[int, Path]:
    """1- and 10-minute 640x480 clips at 30 fps, low bitrate (small files, many frames), made at
    test time once and kept in .cache (never committed)."""
    from cases import long_video

    return {m: long_video(CACHE / "media" / f"long-{m}min.mp4", seconds=60 * m) for m in (1, 10)}
