"""The serving path's text levers without a server: the direct template render and when the
server uses it, the completion request it hands vLLM, the inline render of short texts, and
the growing nap of the step queue readers. Their vectors are checked against the independent
reference by the server tests (test_any_client, test_fuzz: every `input` and `/v2/embed` text)."""

from __future__ import annotations

import asyncio
import random
import types

import pytest

from qwen3vl_vllm.prompts.engine import chat_template_text
from qwen3vl_vllm.prompts.inputs import embedding_conversation
from qwen3vl_vllm.prompts.render import DirectTemplate
from qwen3vl_vllm.serving import embed_inputs as E
from qwen3vl_vllm.serving import inline_response, settings, shm_spin, video_fit_hook

PIECES = ["cat", "日本語", "émoji 🐈", "{{ x }}", "{% raw %}", "<|im_end|>", "<|im_start|>user", "\n", "\t",
          "  ", "NULL", "end.", "?", "'quote'", '"dq"', "\\n", "a" * 300]


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 8))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(embedding_ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedding_ckpt))


@pytest.mark.parametrize("seed", range(4))
def test_direct_render_is_apply_chat_template(tokenizer, seed):
    template = chat_template_text("embedding")
    direct = DirectTemplate(tokenizer, template, check="once")
    rng = random.Random(seed)
    convs = [embedding_conversation({"text": t} if rng.random() < 0.5 else {"text": t, "instruction": "Find " + t})
             for t in _texts(seed, 40)]
    got = direct.render(convs)
    assert direct.direct
    want = [tokenizer.apply_chat_template(c, chat_template=template, tokenize=False, add_generation_prompt=True)
            for c in convs]
    assert got == want
    assert all(g.endswith("<|im_end|>\n<|im_start|>assistant\n") for g in got)


def test_check_once_stops_checking_and_every_checks_each_call(tokenizer):
    calls = []
    for check, expected in (("once", 1), ("every", 3)):
        direct = DirectTemplate(tokenizer, chat_template_text("embedding"), check=check)
        reference = direct.reference
        direct.reference = lambda c, _r=reference: calls.append(check) or _r(c)
        for k in range(3):
            direct.render([embedding_conversation({"text": f"t{k}"})])
        assert calls.count(check) == expected
    with pytest.raises(ValueError, match="check must be"):
        DirectTemplate(tokenizer, None, check="never")
    assert DirectTemplate(tokenizer, None).render([]) == []


def _processor(tokenizer, **over):
    attrs = dict(chat_template=chat_template_text("embedding"), template_kwargs=None, tool_dicts=None,
                 renderer=types.SimpleNamespace(tokenizer=tokenizer))
    attrs.update(over)
    return types.SimpleNamespace(**attrs)


def test_the_server_renders_directly_only_its_own_template_without_extras(tokenizer):
    assert isinstance(E._direct_template(_processor(tokenizer)), DirectTemplate)
    for over in ({"chat_template": "{{ messages[0]['content'] }}"}, {"chat_template": None},
                 {"template_kwargs": {"enable_thinking": False}}, {"tool_dicts": [{"name": "f"}]},
                 {"renderer": types.SimpleNamespace(tokenizer=object())}):
        assert E._direct_template(_processor(tokenizer, **over)) is None, over


def test_texts_reach_vllm_as_the_rendered_prompt_with_the_chat_paths_tokenising(tokenizer):
    seen = []
    processor = _processor(tokenizer)
    request = types.SimpleNamespace(model="m")
    ctx = types.SimpleNamespace(request=request)
    convs = E.text_conversations(["a cat", "<|im_end|> x"], "Find pets")

    def original(proc, c):
        seen.append(c.request)
        return ["factory"]

    assert E._render_texts(processor, ctx, convs, -1, "right", original) == ["factory"]
    assert ctx.request is request  # put back
    proxy = seen[0]
    assert proxy.input == [tokenizer.apply_chat_template(c, chat_template=processor.chat_template, tokenize=False,
                                                         add_generation_prompt=True) for c in convs]
    assert proxy.input[0].startswith("<|im_start|>system\nFind pets.<|im_end|>")
    assert proxy.add_special_tokens is False  # as the chat path tokenises
    assert (proxy.truncate_prompt_tokens, proxy.truncation_side) == (-1, "right")


def test_a_user_template_keeps_vllms_chat_path(tokenizer, monkeypatch):
    processor = _processor(tokenizer, chat_template="{{ 'mine' }}")
    monkeypatch.setattr(E, "_render", lambda *a: ["chat path"])
    assert E._render_texts(processor, types.SimpleNamespace(request=None), [[]], None, None,
                           lambda *a: ["completion"]) == ["chat path"]


def test_only_short_text_prompts_render_inline():
    short = {"prompts": {"prompt": "x" * 10}}
    assert video_fit_hook._short_text(short, 2000)
    assert not video_fit_hook._short_text({"prompts": {"prompt": "x" * 2001}}, 2000)
    assert not video_fit_hook._short_text({"prompts": {"prompt_token_ids": [1, 2]}}, 2000)
    assert not video_fit_hook._short_text({"prompts": {"prompt": "x", "multi_modal_data": {}}}, 2000)
    assert not video_fit_hook._short_text({"conversations": [[]]}, 2000)
    assert settings.inline_render_chars({}) == settings.INLINE_RENDER_CHARS == 2000
    assert settings.inline_render_chars({settings.INLINE_RENDER_ENV: "0"}) == 0
    for bad in ("many", "-3"):
        with pytest.raises(ValueError, match=settings.INLINE_RENDER_ENV):
            settings.inline_render_chars({settings.INLINE_RENDER_ENV: bad})


def test_inline_render_answers_as_the_pool_does():
    """A short text renders at once, on the loop's thread, with its result or its error at the
    await; a long one goes to the executor; no bound (0) sends every prompt there."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads = []

    def render(params):
        threads.append(threading.current_thread().name)
        if params.get("bad"):
            raise ValueError("input: too long")
        return ("rendered", params["prompts"]["prompt"][:1])

    async def go(limit):
        with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
            render_async = video_fit_hook.render_async_for(render, pool, limit)
            short = await render_async({"prompts": {"prompt": "hi"}})
            long = await render_async({"prompts": {"prompt": "y" * 5000}})
            with pytest.raises(ValueError, match="too long"):
                await render_async({"prompts": {"prompt": "z"}, "bad": True})
            return short, long

    assert asyncio.run(go(2000)) == (("rendered", "h"), ("rendered", "y"))
    here = threading.current_thread().name
    assert threads[0] == threads[2] == here and threads[1].startswith("pool")
    threads.clear()
    asyncio.run(go(0))
    assert all(t.startswith("pool") for t in threads) and len(threads) == 3


def test_naps_grow_with_the_wait_up_to_their_cap():
    assert shm_spin.nap_s(0.0001, 0.0001, 0.001) == 0.0001
    assert shm_spin.nap_s(0.01, 0.0001, 0.001) == pytest.approx(0.0005)  # 5 % of the wait
    assert shm_spin.nap_s(0.01, 0.0001, 0.001, growth=0.1) == pytest.approx(0.001)
    assert shm_spin.nap_s(0.5, 0.0001, 0.001) == 0.001
    assert shm_spin.nap_s(0.5, 0.0001, 0.0001) == 0.0001  # cap = first nap: a fixed nap
    assert (shm_spin.NAP_S, shm_spin.NAP_MAX_S, shm_spin.NAP_GROWTH) == (0.0001, 0.001, 0.05)


def _ctx(*sizes, data=True):
    """A pooling context whose outputs hold tensors of these sizes (``data=False``: no tensor)."""
    import torch

    outs = [types.SimpleNamespace(outputs=types.SimpleNamespace(data=torch.zeros(n) if data else None))
            for n in sizes]
    return types.SimpleNamespace(final_res_batch=outs)


def test_response_values_count_the_pooled_tensors():
    assert inline_response.response_values(_ctx(2048)) == 2048
    assert inline_response.response_values(_ctx(1, 1, 1)) == 3  # three rerank scores
    assert inline_response.response_values(_ctx(64, 64)) == 128
    assert inline_response.response_values(_ctx()) is None  # nothing collected: the pool
    assert inline_response.response_values(_ctx(4, data=False)) is None  # not a tensor: the pool
    assert inline_response.response_values(types.SimpleNamespace()) is None
    assert settings.inline_response_values({}) == settings.INLINE_RESPONSE_VALUES == 4096
    assert settings.inline_response_values({settings.INLINE_RESPONSE_ENV: "0"}) == 0
    for bad in ("lots", "-1", "2.5"):
        with pytest.raises(ValueError, match=settings.INLINE_RESPONSE_ENV):
            settings.inline_response_values({settings.INLINE_RESPONSE_ENV: bad})


def test_small_responses_are_built_on_the_loop_and_large_ones_on_the_pool():
    """The same method builds every response; at most ``limit`` values it runs at once on the
    loop's thread, above it (or with no bound) through vLLM's pooled wrapper; an error reaches
    the await either way."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads = []

    def postprocess(io_processor, ctx):
        threads.append(threading.current_thread().name)
        if io_processor == "bad":
            raise ValueError("input[0]: no output")
        return ("response", inline_response.response_values(ctx))

    async def go(limit):
        with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
            loop = asyncio.get_running_loop()

            async def pooled(io_processor, ctx):
                return await loop.run_in_executor(pool, postprocess, io_processor, ctx)

            build = inline_response.postprocessing_async_for(postprocess, pooled, limit)
            small = await build("embed", _ctx(2048))
            large = await build("embed", _ctx(4096, 4096))
            with pytest.raises(ValueError, match="no output"):
                await build("bad", _ctx(8))
            unknown = await build("embed", _ctx(8, data=False))
            return small, large, unknown

    assert asyncio.run(go(4096)) == (("response", 2048), ("response", 8192), ("response", None))
    here = threading.current_thread().name
    assert threads[0] == threads[2] == here
    assert threads[1].startswith("pool") and threads[3].startswith("pool")
    threads.clear()
    asyncio.run(go(0))
    assert len(threads) == 4 and all(t.startswith("pool") for t in threads)


def test_the_inline_response_patch_wraps_each_servers_postprocessing_once(monkeypatch):
    """On a stand-in for vLLM's ``__init__`` (the real one needs an engine): after the patch a
    server's ``_postprocessing_async`` builds a small response on the loop's thread with the
    server's own ``_postprocessing`` and sends a large one to the async method vLLM set; a
    second ``patch()`` changes nothing."""
    import threading

    from vllm.entrypoints.pooling.base.serving import PoolingBaseServing

    def vllms_init(self):
        async def pooled(io_processor, ctx):
            return "pooled"
        self._postprocessing_async = pooled

    def postprocessing(self, io_processor, ctx):
        return ("inline", threading.current_thread().name)

    monkeypatch.setattr(PoolingBaseServing, "__init__", vllms_init)
    monkeypatch.setattr(PoolingBaseServing, "_postprocessing", postprocessing)
    monkeypatch.delenv(settings.INLINE_RESPONSE_ENV, raising=False)
    assert "PoolingBaseServing.__init__" in inline_response.patch()
    wrapped = PoolingBaseServing.__init__
    assert inline_response.patch() is None and PoolingBaseServing.__init__ is wrapped
    assert wrapped.__wrapped__ is vllms_init
    class Server(PoolingBaseServing):  # concrete: vLLM's class leaves these abstract
        _build_response = get_io_processor = None

    server = Server()

    async def go():
        return (await server._postprocessing_async("embed", _ctx(2048)),
                await server._postprocessing_async("embed", _ctx(4096, 1)))

    assert asyncio.run(go()) == (("inline", threading.current_thread().name), "pooled")
