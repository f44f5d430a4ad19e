"""`qwen3vl-vllm serve --config` as a child process group: the launcher as users start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Launched:
    def __init__(self, config: str, *sets: str, env_extra: dict | None = None, name: str | None = None):
        from qwen3vl_vllm.ops.launcher import free_port

        self.port = free_port()
        env = dict(os.environ, **(env_extra or {}))
        args = [sys.executable, "-m", "qwen3vl_vllm.ops.cli", "serve", "--config", config,
                "--set", f"server.port={self.port}"]
        for s in sets:
            args += ["--set", s]
        self.log = ROOT / ".cache" / "logs" / f"launcher-{name or Path(config).stem}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.descendants: set[int] = set()

    def wait_listening(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "listening on" in text:
                self.descendants = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited early rc={self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.5)
        raise AssertionError("launcher never printed 'listening on'")

    def terminate(self, timeout=60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
