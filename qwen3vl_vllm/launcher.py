"""Start, health-check and stop a vLLM OpenAI server for a checkpoint.

Used by the demo, the tests and (with YAML configs) ``qwen3vl-vllm serve``. The server is a
child process in its own process group, bound to 127.0.0.1 by default on a free port; ``stop()``
sends SIGTERM to the group, then SIGKILL after a grace period, so nothing is left behind and an
exit-time abort of the server (SPEC §4) never reaches the caller's exit code.

Example::

    from qwen3vl_vllm.launcher import ServerProcess
    with ServerProcess("/tmp/ckpt/Qwen3-VL-Embedding-tiny-random", extra_args=["--dtype", "float32"]) as srv:
        print(srv.base_url)     # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_env(cache_root: str | os.PathLike | None = None) -> dict:
    """Environment for a vLLM child on these machines (SPEC §4)."""
    env = dict(os.environ)
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cache_root is not None:
        env.setdefault("VLLM_CACHE_ROOT", str(cache_root))
    return env


def serve_command(model: str, *, host: str = "127.0.0.1", port: int,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command line (through this interpreter, so the venv's vLLM runs)."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model,
            "--host", host, "--port", str(port), *extra_args]


class ServerError(RuntimeError):
    pass


class ServerProcess:
    def __init__(self, model: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 extra_args: Sequence[str] = (), log_path: str | os.PathLike | None = None,
                 env: dict | None = None, startup_timeout: float = 300.0):
        self.model = os.fspath(model)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.env = env or vllm_env()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> "ServerProcess":
        cmd = serve_command(self.model, host=self.host, port=self.port, extra_args=self.extra_args)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_healthy(self, timeout: float | None = None) -> None:
        import httpx

        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"vLLM server exited early (rc={self.proc.returncode if self.proc else None});"
                                  f" see {self.log_path or 'its output'}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerError(f"vLLM server not healthy after {timeout or self.startup_timeout:.0f}s; "
                          f"see {self.log_path or 'its output'}")

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                rc = self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in the group (engine core, workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if rc is None:
            rc = self.proc.wait(10)
        if self._log:
            self._log.close()
        return rc

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
