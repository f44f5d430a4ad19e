"""One source of truth for engine settings: the plugin (``vllm serve``), the offline API, the
launcher's dry run and the benchmarks' plain-vLLM command all give the same engine settings per
kind, and vLLM resolves the plugin's into the ModelConfig the package intends."""

from __future__ import annotations

import json
import shlex

import pytest

from qwen3vl_vllm.prompts import engine as settings
from qwen3vl_vllm.prompts.engine import ENGINE_FIELDS, KINDS, effective_engine_kwargs

NAMES = {"embedding": "Qwen/Qwen3-VL-Embedding-2B", "reranker": "Qwen/Qwen3-VL-Reranker-2B"}


@pytest.fixture(autouse=True)
def _no_kind_env(monkeypatch):
    monkeypatch.delenv("QWEN3VL_VLLM_KIND", raising=False)


def _plain(value):
    """vLLM objects (PoolerConfig) -> comparable plain values."""
    if hasattr(value, "seq_pooling_type"):
        return {"seq_pooling_type": value.seq_pooling_type, "use_activation": value.use_activation}
    return value


def _engine_args(model: str, **user):
    """vLLM's EngineArgs defaults for every field (without resolving the model on a hub)."""
    import dataclasses
    import types

    from vllm.engine.arg_utils import EngineArgs

    values = {}
    for f in dataclasses.fields(EngineArgs):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return types.SimpleNamespace(**{**values, "model": model, **user})


def _from_plugin(kind: str, **user) -> dict:
    from qwen3vl_vllm.serving.plugin import apply_engine_defaults

    args = _engine_args(NAMES[kind], **user)
    assert apply_engine_defaults(args) == kind
    return {f: _plain(getattr(args, f)) for f in ENGINE_FIELDS}


def _from_offline(kind: str, **user) -> dict:
    from qwen3vl_vllm.offline.engines import _engine_kwargs

    kw = _engine_kwargs(kind, dict(user))
    return {f: _plain(kw[f]) for f in ENGINE_FIELDS}


def _flags(args: list[str]) -> dict:
    out, key = {}, None
    for a in args[1:]:
        if a.startswith("--"):
            key = a[2:].replace("-", "_")
            out[key] = True
        elif key:
            out[key] = a
            key = None
    return out


def _from_launcher(kind: str, *, plugin: bool = True, **data) -> dict:
    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import dry_run_command, vllm_args

    cfg = load_config(None, data={"model": NAMES[kind], **data})
    args = vllm_args(cfg, cfg.model, plugin=plugin)
    if plugin:  # the dry run prints exactly these flags
        assert shlex.split(dry_run_command(cfg, cfg.model)).count("--runner") == 1
    f = _flags(args)
    out = {}
    for field in ENGINE_FIELDS:
        raw = f[field]
        out[field] = int(raw) if field.startswith("max_") else (
            raw if field in ("runner", "convert") else json.loads(raw))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_plugin_offline_launcher_and_benchmarks_agree(kind):
    expected = {f: _plain(v) for f, v in effective_engine_kwargs(kind, {}).items()}
    assert _from_plugin(kind) == expected
    assert _from_offline(kind) == expected
    assert _from_launcher(kind) == expected
    # the benchmarks' plain-vLLM server: the same, less what only the plugin's loader reads
    plain = _from_launcher(kind, plugin=False)
    video = dict(expected["media_io_kwargs"]["video"])
    from qwen3vl_vllm.ops.launcher import PLUGIN_ONLY_VIDEO_KEYS

    for key in PLUGIN_ONLY_VIDEO_KEYS:
        video.pop(key)
    assert plain == {**expected, "media_io_kwargs": {"video": video}}


@pytest.mark.parametrize("kind", KINDS)
def test_user_values_merge_the_same_way_everywhere(kind):
    user = {"max_model_len": 4096, "hf_overrides": {"extra": 1},
            "mm_processor_kwargs": {"videos_kwargs": {"do_resize": False}}}
    expected = {f: _plain(v) for f, v in effective_engine_kwargs(kind, user).items()}
    assert expected["max_num_batched_tokens"] == settings.engine_defaults(kind)["max_num_batched_tokens"]
    assert expected["hf_overrides"]["extra"] == 1 and "images_kwargs" in expected["mm_processor_kwargs"]
    assert _from_plugin(kind, **user) == expected
    assert _from_offline(kind, **user) == expected
    assert _from_launcher(kind, max_model_len=4096)["max_num_batched_tokens"] == expected["max_num_batched_tokens"]


def test_vllm_resolves_the_plugins_settings(tmp_path):
    """vLLM's own ModelConfig, built from a tiny embedding checkpoint with no flags."""
    from vllm.engine.arg_utils import EngineArgs

    from qwen3vl_vllm.serving import plugin
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(tmp_path, kind="embedding", size="tiny")
    plugin.register()
    config = EngineArgs(model=str(ckpt), dtype="float32").create_model_config()
    assert config.runner_type == "pooling" and config.max_model_len == 8192
    assert config.pooler_config.seq_pooling_type == "LAST" and config.pooler_config.use_activation
    assert config.is_matryoshka
    assert config.multimodal_config.mm_processor_kwargs == settings.mm_processor_kwargs()
    assert config.multimodal_config.media_io_kwargs == settings.media_io_kwargs()


@pytest.mark.parametrize("name,expected", [("embedding-2b.yaml", None), ("reranker-2b.yaml", None),
                                           ("embedding-8b.yaml", None), ("reranker-8b.yaml", None),
                                           ("tiny-embedding-cpu.yaml", "1"), ("tiny-reranker-cpu.yaml", "1")])
def test_launcher_leaves_the_kv_cache_to_the_plugin_unless_asked(monkeypatch, name, expected):
    """vLLM lets VLLM_CPU_KVCACHE_SPACE override every other KV cache setting on CPU, so a
    launcher default of 1 GiB stopped the 2B reranker (its 10,245-token prompt needs 1.1 GiB in
    bf16): only a config's cpu_kvcache_gib or the user's own variable may set it."""
    from pathlib import Path

    from qwen3vl_vllm.ops.config import load_config
    from qwen3vl_vllm.ops.launcher import server_env, vllm_env

    root = Path(__file__).resolve().parents[2]
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_env()
    cfg = load_config(root / "configs" / name)
    assert server_env(cfg).get("VLLM_CPU_KVCACHE_SPACE") == expected
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    assert server_env(cfg)["VLLM_CPU_KVCACHE_SPACE"] == (expected or "7")
    exported = [ln for ln in (root / "launch.sh").read_text().splitlines()
                if ln.lstrip().startswith("export") and "VLLM_CPU_KVCACHE_SPACE" in ln]
    assert exported == [], exported


@pytest.mark.parametrize("kind", KINDS)
def test_offline_engine_gets_the_served_chat_template(kind, tmp_path, monkeypatch):
    """vllm.LLM gets the template text `vllm serve` gets from the plugin (no file anywhere),
    unless the user passes their own."""
    import tempfile

    from qwen3vl_vllm.offline.engines import _engine_kwargs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _engine_kwargs(kind, {})["chat_template"] == settings.chat_template_text(kind)
    assert _engine_kwargs(kind, {"chat_template": "mine.jinja"})["chat_template"] == "mine.jinja"
    assert list(tmp_path.iterdir()) == []  # no temp file written
