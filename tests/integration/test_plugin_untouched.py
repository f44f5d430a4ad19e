"""The plugin resolves our kinds and leaves other Qwen3-VL checkpoints exactly as vLLM would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = r"""
import json, sys
from vllm.engine.arg_utils import EngineArgs
cfg = EngineArgs(model=sys.argv[1], dtype="float32").create_model_config()
pooler = cfg.pooler_config
print("RESULT " + json.dumps({
    "runner": cfg.runner_type, "convert": cfg.convert_type,
    "architecture": cfg.architecture, "max_model_len": cfg.max_model_len,
    "pooling": getattr(pooler, "seq_pooling_type", None) if pooler else None,
    "matryoshka": bool(getattr(cfg.hf_config, "is_matryoshka", False)),
}))
"""


def _resolve(model, plugins_enabled: bool) -> dict:
    env = dict(os.environ)
    if not plugins_enabled:
        env["VLLM_PLUGINS"] = "__none__"  # allow-list that matches no plugin
    out = subprocess.run([sys.executable, "-c", PROBE, str(model)], env=env, capture_output=True,
                         text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    return json.loads(line[-1][7:])


def test_instruct_checkpoint_untouched(instruct_ckpt):
    with_plugin = _resolve(instruct_ckpt, True)
    without = _resolve(instruct_ckpt, False)
    assert with_plugin == without
    assert with_plugin["runner"] == "generate"
    assert with_plugin["architecture"] == "Qwen3VLForConditionalGeneration"


def test_embedding_checkpoint_configured(embedding_ckpt):
    got = _resolve(embedding_ckpt, True)
    assert got["runner"] == "pooling"
    assert got["convert"] == "embed"
    assert got["pooling"] == "LAST"
    assert got["matryoshka"] is True
    assert got["max_model_len"] == 8192
    plain = _resolve(embedding_ckpt, False)
    assert plain["runner"] == "generate"  # what vLLM does without the plugin
