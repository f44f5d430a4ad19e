"""Every way of starting vLLM gets the plugin, and a vLLM without what the plugin needs refuses
to start a detected checkpoint (the contract gate), naming what is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx
import numpy as np
import pytest

from conftest import CACHE, SERVER_ARGS

pytestmark = pytest.mark.slow
KEY = "entry-point-key-42"


def test_python_m_api_server_gets_the_serve_hook(embedding_ckpt, reference_embedder):
    """``python -m vllm.entrypoints.openai.api_server`` validates its arguments before vLLM loads
    plugins; the app-factory hook still gives it the templates and the middleware."""
    from qwen3vl_vllm.ops.launcher import ServerProcess, free_port, vllm_env

    port = free_port()
    args = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(embedding_ckpt),
            "--host", "127.0.0.1", "--port", str(port), *SERVER_ARGS]
    server = ServerProcess(embedding_ckpt, port=port, env={**vllm_env(), "VLLM_API_KEY": KEY},
                           log_path=CACHE / "logs" / "test-python-m-api-server.log")
    server.full_args = None
    cmd = [sys.executable, *args]
    server.proc = subprocess.Popen(cmd, env=server.env, stdin=subprocess.DEVNULL,
                                   stdout=open(server.log_path, "wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        server.wait_healthy()
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(server.base_url + "/embeddings", headers=auth, timeout=60,
                       json={"model": str(embedding_ckpt), "input": "a cat on a mat"})
        assert r.status_code == 200, r.text
        ref = reference_embedder.process([{"text": "a cat on a mat"}])[0]
        cosine = float(np.asarray(r.json()["data"][0]["embedding"]) @ ref)
        assert cosine >= 0.999999, cosine  # the input string got the reference prompt
        assert httpx.post(server.url + "/pooling", timeout=30, json={}).status_code == 401  # middleware
        print(f"ENTRY python -m api_server: cosine {cosine:.7f}, /pooling without key 401")
    finally:
        server.stop()


SIMULATE = """
import sys
import vllm.renderers.base as base

del base.BaseRenderer._process_multimodal   # a vLLM that no longer has what the plugin wraps
sys.argv = ["vllm", "serve", {ckpt!r}, "--host", "127.0.0.1", "--port", "{port}", *{args!r}]
from vllm.entrypoints.cli.main import main
main()
"""


def test_a_missing_vllm_symbol_refuses_to_start(embedding_ckpt, tmp_path):
    from qwen3vl_vllm.ops.launcher import free_port, vllm_env

    script = tmp_path / "simulate.py"
    script.write_text(textwrap.dedent(SIMULATE.format(ckpt=str(embedding_ckpt), port=free_port(),
                                                      args=SERVER_ARGS)))
    res = subprocess.run([sys.executable, str(script)], env=vllm_env(), capture_output=True,
                         text=True, timeout=300)
    output = res.stdout + res.stderr
    assert res.returncode != 0, output[-2000:]
    line = next((ln for ln in output.splitlines() if "refusing to serve" in ln), "")
    assert "_process_multimodal not found in vllm.renderers.base" in line, output[-3000:]
    assert "Tested with vLLM 0.32.x and 0.33.x" in line and "QWEN3VL_VLLM_KIND=none" in line
    print(f"ENTRY missing symbol: exit code {res.returncode}; {line.strip()[:400]}")
