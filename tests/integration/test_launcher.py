"""`qwen3vl-vllm serve --config` with the tiny CPU configs: real servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from cases import noise_image

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789"


class Launched:
    def __init__(self, config: str, *sets: str, env_extra: dict | None = None):
        from qwen3vl_vllm.launcher import free_port

        self.port = free_port()
        env = dict(os.environ, **(env_extra or {}))
        args = [sys.executable, "-m", "qwen3vl_vllm.cli", "serve", "--config", config,
                "--set", f"server.port={self.port}"]
        for s in sets:
            args += ["--set", s]
        self.log = (ROOT / ".cache" / "logs" / f"launcher-{Path(config).stem}.log")
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


def _alive(pids: set[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _png_file(path: Path) -> Path:
    noise_image(64, 64, 7).save(path)
    return path


@pytest.fixture(scope="module")
def media_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    inside = _png_file(allowed / "in.png")
    outside = _png_file(root / "out.png")
    (allowed / "link.png").symlink_to(outside)
    return {"allowed": allowed, "inside": inside, "outside": outside,
            "dotdot": allowed / ".." / "out.png", "link": allowed / "link.png"}


@pytest.fixture(scope="module")
def embedding_launch(media_tree, embedding_ckpt):
    srv = Launched("configs/tiny-embedding-cpu.yaml", f"media.local_media_dir={media_tree['allowed']}",
                   env_extra={"QWEN3VL_API_KEY": KEY})
    try:
        srv.wait_listening()
        yield srv
    finally:
        srv.kill()


def _embed(srv, content, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + "/v1/embeddings", headers=headers, timeout=120, json={
        "model": srv.model if hasattr(srv, "model") else None, "add_generation_prompt": True,
        "messages": [{"role": "user", "content": content}]})


def _model(srv, key=KEY):
    r = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return r.json()["data"][0]["id"]


def test_health_and_embedding(embedding_launch):
    srv = embedding_launch
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    srv.model = _model(srv)
    r = _embed(srv, [{"type": "text", "text": "hello"}])
    assert r.status_code == 200, r.text
    vec = np.asarray(r.json()["data"][0]["embedding"])
    assert vec.shape == (64,) and abs(np.linalg.norm(vec) - 1) < 1e-4


def test_api_key(embedding_launch):
    srv = embedding_launch
    srv.model = _model(srv)
    assert _embed(srv, [{"type": "text", "text": "x"}], key=None).status_code == 401
    assert _embed(srv, [{"type": "text", "text": "x"}], key="wrong").status_code == 401
    assert _embed(srv, [{"type": "text", "text": "x"}]).status_code == 200


def test_local_files_only_inside_allowed_folder(embedding_launch, media_tree):
    srv = embedding_launch
    srv.model = _model(srv)
    ok = _embed(srv, [{"type": "image_url", "image_url": {"url": f"file://{media_tree['inside']}"}}])
    assert ok.status_code == 200, ok.text
    for name in ("outside", "dotdot", "link"):
        r = _embed(srv, [{"type": "image_url", "image_url": {"url": f"file://{media_tree[name]}"}}])
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)


def test_remote_fetch_off_by_default(embedding_launch):
    srv = embedding_launch
    srv.model = _model(srv)
    r = _embed(srv, [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}])
    assert r.status_code == 400 and "media.remote_fetch is off" in r.json()["error"]["message"]


def test_body_limit(embedding_launch):
    srv = embedding_launch
    big = "x" * (33554432 + 10)
    r = httpx.post(srv.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   content=b'{"input": "' + big.encode() + b'"}')
    assert r.status_code == 413


def test_sigterm_stops_cleanly(embedding_launch):
    srv = embedding_launch
    children = set(srv.descendants)
    assert children, "the launcher should have started vLLM processes"
    rc = srv.terminate()
    assert rc == 0
    deadline = time.monotonic() + 30
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(children) == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(srv.url + "/health", timeout=2)


def test_reranker_config_live(reranker_ckpt, media_tree):
    srv = Launched("configs/tiny-reranker-cpu.yaml", env_extra={"QWEN3VL_API_KEY": ""})
    try:
        srv.wait_listening()
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
        r = httpx.post(srv.url + "/v1/rerank", timeout=120, json={
            "query": "a cat", "documents": ["a cat on a mat", "stock prices"]})
        assert r.status_code == 200, r.text
        assert sorted(x["index"] for x in r.json()["results"]) == [0, 1]
        # no local files by default
        r = httpx.post(srv.url + "/v1/rerank", timeout=60, json={
            "query": "a cat", "documents": [{"content": [
                {"type": "image_url", "image_url": {"url": f"file://{media_tree['inside']}"}}]}]})
        assert 400 <= r.status_code < 500, r.text
        children = set(srv.descendants)
        assert srv.terminate() == 0
        deadline = time.monotonic() + 30
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive(children) == []
    finally:
        srv.kill()
