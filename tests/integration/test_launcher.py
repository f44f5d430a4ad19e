"""`qwen3vl-vllm serve --config` with the tiny CPU configs: real servers on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import os

import httpx
import numpy as np
import psutil
import pytest

from cases import noise_image
from launched import Launched

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789"


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
    os.mkfifo(allowed / "fifo.png")  # inside the folder, but no file: reading it would hang
    (allowed / "zero.png").symlink_to("/dev/zero")  # inside, a device: reading it never ends
    return {"allowed": allowed, "inside": inside, "outside": outside,
            "dotdot": allowed / ".." / "out.png", "link": allowed / "link.png",
            "fifo": allowed / "fifo.png", "zero": allowed / "zero.png"}


@pytest.fixture(scope="module")
def embedding_launch(media_tree, embedding_ckpt, tmp_path_factory):
    table = tmp_path_factory.mktemp("routes") / "routes.json"
    srv = Launched("configs/tiny-embedding-cpu.yaml", f"media.local_media_dir={media_tree['allowed']}",
                   env_extra={"QWEN3VL_API_KEY": KEY, "QWEN3VL_ROUTE_TABLE": str(table)})
    try:
        srv.wait_listening()
        srv.table = table
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


def test_every_route_needs_the_key(embedding_launch):
    """Every route of the running embedding server's own route table: 401 without the key
    (the probes excepted), served with it."""
    from route_checks import assert_every_route_behind_the_key, probe_routes
    from test_security import record

    rows = probe_routes(embedding_launch.url, embedding_launch.table, KEY)
    assert_every_route_behind_the_key(rows)
    paths = {r["path"] for r in rows}
    assert {"/v1/embeddings", "/v2/embed", "/pooling", "/invocations", "/health"} <= paths, sorted(paths)
    record("route_table_embedding", rows)


def test_local_files_only_inside_allowed_folder(embedding_launch, media_tree):
    srv = embedding_launch
    srv.model = _model(srv)
    ok = _embed(srv, [{"type": "image_url", "image_url": {"url": f"file://{media_tree['inside']}"}}])
    assert ok.status_code == 200, ok.text
    for name in ("outside", "dotdot", "link"):
        r = _embed(srv, [{"type": "image_url", "image_url": {"url": f"file://{media_tree[name]}"}}])
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    for name, fragment in (("fifo", "is not a regular file"), ("zero", "")):
        r = _embed(srv, [{"type": "image_url", "image_url": {"url": f"file://{media_tree[name]}"}}])
        assert r.status_code == 400, (name, r.status_code, r.text)  # answered: nothing hung
        assert r.json()["error"]["message"].startswith("messages[0].content[0]:"), r.text
        assert fragment in r.json()["error"]["message"], (name, r.text)


def test_remote_fetch_off_by_default(embedding_launch):
    srv = embedding_launch
    srv.model = _model(srv)
    r = _embed(srv, [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("messages[0].content[0]: this server does not fetch media URLs")


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
