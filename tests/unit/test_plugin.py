import json
import os
import types

import pytest

from qwen3vl_vllm import detect, plugin


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # apply_serve_defaults writes these into os.environ: monkeypatch restores them after each
    # test, so no later server started by the suite inherits them
    for name in (detect.KIND_ENV, plugin.KEEP_ALIVE_ENV, plugin.MEDIA_CONNECTOR_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name,kind", [
    ("Qwen/Qwen3-VL-Embedding-2B", "embedding"),
    ("Qwen/Qwen3-VL-Embedding-8B", "embedding"),
    ("/models/qwen3-vl-reranker-8b", "reranker"),
    ("Qwen/Qwen3-VL-2B-Instruct", None),
    ("Qwen/Qwen3-Embedding-0.6B", None),
    ("", None),
])
def test_detect_by_name(name, kind):
    assert detect.detect_kind(name) == kind


def _ckpt(tmp_path, name, **cfg):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_detect_by_config(tmp_path, monkeypatch):
    assert detect.detect_kind(_ckpt(tmp_path, "a", model_type="qwen3_vl", qwen3vl_vllm_kind="reranker")) == "reranker"
    # the name says embedding but it is not a Qwen3-VL checkpoint: leave it alone
    assert detect.detect_kind(_ckpt(tmp_path, "Qwen3-VL-Embedding-x", model_type="llama")) is None
    assert detect.detect_kind(_ckpt(tmp_path, "Qwen3-VL-Embedding-y", model_type="qwen3_vl")) == "embedding"
    monkeypatch.setenv(detect.KIND_ENV, "none")
    assert detect.detect_kind("Qwen/Qwen3-VL-Embedding-2B") is None


def _args(model, **kw):
    base = dict(model=model, runner="auto", convert="auto", pooler_config=None, hf_overrides=None,
                mm_processor_kwargs=None, media_io_kwargs={}, max_model_len=None, limit_mm_per_prompt={},
                max_num_batched_tokens=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_user_settings_win():
    args = _args("Qwen/Qwen3-VL-Embedding-2B", max_model_len=2048, hf_overrides={"foo": 1},
                 mm_processor_kwargs={"images_kwargs": {"max_pixels": 100000}})
    pytest.importorskip("vllm")
    assert plugin.apply_engine_defaults(args) == "embedding"
    assert args.runner == "pooling" and args.convert == "embed"
    assert args.max_model_len == 2048
    assert args.hf_overrides == {"is_matryoshka": True, "foo": 1}
    assert args.mm_processor_kwargs == {"images_kwargs": {"max_pixels": 100000}}
    assert args.media_io_kwargs == plugin.MEDIA_IO_KWARGS
    assert args.media_io_kwargs["video"]["video_backend"] == "qwen3vl"


def test_untouched_args_for_other_models():
    args = _args("Qwen/Qwen3-VL-2B-Instruct")
    before = dict(vars(args))
    assert plugin.apply_engine_defaults(args) is None
    assert vars(args) == before


def test_serve_defaults_template():
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Reranker-2B", model=None, chat_template=None,
                               middleware=[])
    assert plugin.apply_serve_defaults(ns) == "reranker"
    assert ns.chat_template.endswith("reranker.jinja")
    assert ns.middleware == list(plugin.MIDDLEWARES)
    plugin.apply_serve_defaults(ns)
    assert ns.middleware == list(plugin.MIDDLEWARES)  # idempotent
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Embedding-2B", model=None,
                               chat_template="/mine.jinja", middleware=[])
    plugin.apply_serve_defaults(ns)
    assert ns.chat_template == "/mine.jinja"  # the user's flag wins
    ns = types.SimpleNamespace(model_tag=None, model="x/other", chat_template=None, middleware=[])
    assert plugin.apply_serve_defaults(ns) is None and ns.chat_template is None and ns.middleware == []


def test_serve_keep_alive_outlives_client_pools(monkeypatch):
    import httpx

    monkeypatch.delenv(plugin.KEEP_ALIVE_ENV, raising=False)
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Embedding-2B", model=None,
                               chat_template=None, middleware=[])
    plugin.apply_serve_defaults(ns)
    server_s = int(os.environ[plugin.KEEP_ALIVE_ENV])
    # httpx (and the openai SDK on it) expires idle pooled connections after this many seconds
    client_s = httpx.Limits().keepalive_expiry
    assert server_s > client_s + 5, (server_s, client_s)
    monkeypatch.setenv(plugin.KEEP_ALIVE_ENV, "7")
    plugin.apply_serve_defaults(ns)
    assert os.environ[plugin.KEEP_ALIVE_ENV] == "7"  # the user's value wins
    monkeypatch.delenv(plugin.KEEP_ALIVE_ENV)
    plugin.apply_serve_defaults(types.SimpleNamespace(model_tag=None, model="x/other",
                                                      chat_template=None, middleware=[]))
    assert plugin.KEEP_ALIVE_ENV not in os.environ  # other models: untouched


def test_serve_selects_reference_media_connector(monkeypatch):
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Reranker-2B", model=None,
                               chat_template=None, middleware=[])
    plugin.apply_serve_defaults(ns)
    assert os.environ[plugin.MEDIA_CONNECTOR_ENV] == "qwen3vl"
    monkeypatch.setenv(plugin.MEDIA_CONNECTOR_ENV, "http")
    plugin.apply_serve_defaults(ns)
    assert os.environ[plugin.MEDIA_CONNECTOR_ENV] == "http"  # the user's choice wins
    monkeypatch.delenv(plugin.MEDIA_CONNECTOR_ENV)
    plugin.apply_serve_defaults(types.SimpleNamespace(model_tag=None, model="x/other",
                                                      chat_template=None, middleware=[]))
    assert plugin.MEDIA_CONNECTOR_ENV not in os.environ  # other models: untouched


def test_embedding_template_renders_reference_prompt():
    import jinja2

    tpl = jinja2.Environment().from_string(open(plugin.chat_template_path("embedding")).read())
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "a cat"}]}]
    assert tpl.render(messages=msgs) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>\n<|im_start|>assistant\n")


def test_reranker_template_renders_reference_prompt():
    import jinja2

    from qwen3vl_vllm.inputs import RERANK_PROMPT_TAIL, render_parts, rerank_prompt_head

    tpl = jinja2.Environment().from_string(open(plugin.chat_template_path("reranker")).read())
    msgs = [{"role": "query", "content": "a cat"},
            {"role": "document", "content": "<|vision_start|><|image_pad|><|vision_end|>x"}]
    expected = (rerank_prompt_head("Find pets", [{"type": "text", "text": "a cat"}])
                + render_parts([{"type": "image"}, {"type": "text", "text": "x"}]) + RERANK_PROMPT_TAIL)
    assert tpl.render(messages=msgs, instruction="Find pets") == expected
    assert "<Instruct>: Given a search query" in tpl.render(messages=msgs)
    empty = tpl.render(messages=[{"role": "query", "content": "q"}, {"role": "document", "content": ""}])
    assert "\n<Document>:<|im_end|>" in empty  # "" is an empty text part, not NULL
    assert "<Instruct>: Given a search query" in tpl.render(messages=msgs, instruction="")
