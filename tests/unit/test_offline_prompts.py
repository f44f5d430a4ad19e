"""The offline API's prompt building without an engine: token-id prompts, media ids, the direct
template render and its fallback. The engine-facing half is covered by the offline parity tests
(tests/integration/test_offline.py, test_rerank_offline.py) against the independent reference."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cases import noise_image  # noqa: E402

from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS  # noqa: E402
from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder, Qwen3VLReranker  # noqa: E402
from qwen3vl_vllm.prompts.engine import chat_template_text  # noqa: E402
from qwen3vl_vllm.media.sources import DEFAULT_POLICY  # noqa: E402

WORDS = "cat dog chart invoice 日本語 émoji {{ }} {% raw %} <|im_end|> \\n tab\t end.".split(" ")


def _shell(cls, ckpt: Path, max_model_len: int = 8192):
    """An offline engine object with a real tokenizer and no vLLM engine behind it."""
    from transformers import AutoTokenizer

    obj = object.__new__(cls)
    obj.settings, obj.policy = DEFAULT_SETTINGS, DEFAULT_POLICY
    obj.tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    obj.template = chat_template_text(cls.kind)
    obj._templates = {}
    obj.max_length = 8192
    obj.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len)))
    return obj


def _items(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        kind = rng.choice(["text", "image", "both", "instruction"])
        if kind == "text":
            out.append({"text": text})
        elif kind == "image":
            out.append({"image": noise_image(rng.randint(20, 200), rng.randint(20, 200), seed * 100 + i)})
        elif kind == "both":
            out.append({"text": text, "image": noise_image(64, 48, seed * 100 + i)})
        else:
            out.append({"text": text, "instruction": "Find the " + rng.choice(WORDS)})
    return out


@pytest.mark.parametrize("seed", range(6))
def test_embedding_prompts_are_the_template_render_tokenised(embedding_ckpt, seed):
    from qwen3vl_vllm.prompts.inputs import embedding_conversation

    model = _shell(Qwen3VLEmbedder, embedding_ckpt)
    items = _items(seed, 24)
    prompts = model.prompts(items)
    for i, (item, p) in enumerate(zip(items, prompts)):
        conv = embedding_conversation(item, index=i, settings=DEFAULT_SETTINGS)
        text = model.tokenizer.apply_chat_template(conv, chat_template=model.template, tokenize=False,
                                                   add_generation_prompt=True)
        assert p["prompt"] == text, i
        assert p["prompt_token_ids"] == model.tokenizer(text, add_special_tokens=False)["input_ids"], i
        has_image = "image" in item
        assert ("multi_modal_data" in p) == has_image
        if has_image:
            assert len(p["multi_modal_uuids"]["image"]) == len(p["multi_modal_data"]["image"]) == 1
            assert p["mm_processor_kwargs"] == {"do_resize": False}


def test_media_ids_are_unique_per_item_and_per_call(embedding_ckpt):
    model = _shell(Qwen3VLEmbedder, embedding_ckpt)
    img = noise_image(64, 64, 1)
    items = [{"image": img}, {"image": img}, {"text": "x", "image": [img, img]}]
    first, second = model.prompts(items), model.prompts(items)
    ids = [u for p in first + second for u in p["multi_modal_uuids"]["image"]]
    assert len(ids) == len(set(ids)) == 8  # the same picture in two inputs or calls: new ids


def test_rerank_query_media_share_one_id_across_pairs(reranker_ckpt):
    model = _shell(Qwen3VLReranker, reranker_ckpt)
    q = noise_image(96, 64, 7)
    docs = [{"text": "a"}, {"image": noise_image(64, 64, 8)}, {"text": "b", "image": noise_image(32, 64, 9)}]
    prompts = model.pair_prompts({"query": {"text": "find", "image": q}, "documents": docs})
    query_ids = {p["multi_modal_uuids"]["image"][0] for p in prompts}
    assert len(query_ids) == 1  # one id: vLLM encodes the query image once
    doc_ids = [p["multi_modal_uuids"]["image"][1] for p in prompts[1:]]
    assert len(set(doc_ids)) == 2 and not query_ids & set(doc_ids)
    for p in prompts:  # the query's image first, then the document's, as the prompt orders them
        assert p["multi_modal_data"]["image"][0] is prompts[0]["multi_modal_data"]["image"][0]
    again = model.pair_prompts({"query": {"text": "find", "image": q}, "documents": docs})
    assert again[0]["multi_modal_uuids"]["image"][0] not in query_ids  # a new call, new ids


def test_direct_render_falls_back_to_transformers_when_it_differs(embedding_ckpt):
    model = _shell(Qwen3VLEmbedder, embedding_ckpt)

    from qwen3vl_vllm.prompts.render import DirectTemplate

    class Wrong:
        def render(self, **_):
            return "not the template's output"

    direct = DirectTemplate(model.tokenizer, model.template)
    assert direct.direct
    direct._compiled = Wrong()
    model._templates[model.template] = direct
    prompts = model.prompts([{"text": "hello"}, {"text": "world"}])
    assert all("<|im_start|>assistant\n" in p["prompt"] for p in prompts)
    assert "not the template" not in prompts[1]["prompt"]
    assert not direct.direct  # not tried again for this template


def test_over_long_text_is_refused_by_name_before_the_engine(embedding_ckpt):
    from qwen3vl_vllm.errors import InputError

    model = _shell(Qwen3VLEmbedder, embedding_ckpt, max_model_len=40)
    with pytest.raises(InputError, match=r"inputs\[1\].*longer than max_model_len=40"):
        model.prompts([{"text": "short"}, {"text": "word " * 60}])


def test_a_truncated_pair_carries_only_its_ids(reranker_ckpt):
    from qwen3vl_vllm.prompts.truncation import RERANK_SUFFIX_TOKENS

    docs = [{"text": "short"}, {"text": " ".join(["document"] * 200)}]
    full = _shell(Qwen3VLReranker, reranker_ckpt).pair_prompts({"query": {"text": "q"}, "documents": docs})
    model = _shell(Qwen3VLReranker, reranker_ckpt)
    model.max_length = len(full[0]["prompt_token_ids"]) + 10  # the short pair fits, the long one not
    short, cut = model.pair_prompts({"query": {"text": "q"}, "documents": docs})
    assert short["prompt"] == full[0]["prompt"] and short["prompt_token_ids"] == full[0]["prompt_token_ids"]
    assert "prompt" not in cut  # the rendered text would no longer match the ids
    assert len(cut["prompt_token_ids"]) <= model.max_length + RERANK_SUFFIX_TOKENS
    assert len(cut["prompt_token_ids"]) < len(full[1]["prompt_token_ids"])
    tail = full[1]["prompt_token_ids"][-RERANK_SUFFIX_TOKENS:]
    assert cut["prompt_token_ids"][-RERANK_SUFFIX_TOKENS:] == tail  # the answer suffix survives


def test_prompts_can_return_each_bad_items_error_in_its_place(embedding_ckpt, tmp_path):
    """``errors="return"`` (the index job's mode): bad items' errors in their slots, named by
    their place, and every good item's prompt exactly what it is without the bad ones."""
    from qwen3vl_vllm.errors import InputError, MediaError

    m = _shell(Qwen3VLEmbedder, embedding_ckpt, max_model_len=300)
    good = _items(11, 6)
    bad = {1: {"image": str(tmp_path / "missing.png")}, 3: {"txt": "typo"},
           5: {"text": "word " * 400}, 6: {"image": b"\x89PNG\r\n\x1a\nbroken"}}
    items = list(good)
    for k in sorted(bad):
        items.insert(k, bad[k])
    got = m.prompts(items, errors="return")
    alone = m.prompts(good)
    assert len(got) == len(items)
    for k, e in ((1, MediaError), (3, InputError), (5, InputError), (6, MediaError)):
        assert isinstance(got[k], e), (k, got[k])
        assert str(got[k]).startswith(f"inputs[{k}]"), str(got[k])
    assert "max_model_len=300" in str(got[5])
    rest = [p for k, p in enumerate(got) if k not in bad]
    assert [p["prompt_token_ids"] for p in rest] == [p["prompt_token_ids"] for p in alone]
    for a, b in zip(rest, alone):
        assert [im.size for im in a.get("multi_modal_data", {}).get("image", [])] == \
               [im.size for im in b.get("multi_modal_data", {}).get("image", [])]
    with pytest.raises(InputError, match=r"^inputs\[3\]: unknown key"):  # checks come before media
        m.prompts(items)
    with pytest.raises(ValueError, match="errors must be 'raise' or 'return'"):
        m.prompts(items, errors="skip")


@pytest.mark.parametrize("cls", [Qwen3VLEmbedder, Qwen3VLReranker])
def test_engine_start_leaves_the_process_environment_as_it_was(cls, monkeypatch):
    """The in-process engine's variables are set while it starts, then put back: a server
    started later from this process keeps vLLM's own executor (frontend's rerank rows ran
    without a worker when they leaked)."""
    import os

    import vllm

    from qwen3vl_vllm.offline import engines

    seen = []

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.append({k: os.environ.get(k) for k in engines.OFFLINE_ENV})

        def get_tokenizer(self):
            return SimpleNamespace(special_tokens_map={})

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    for key in engines.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    cls("/nonexistent/Qwen3-VL-tiny")
    assert seen == [dict(engines.OFFLINE_ENV)]  # set while the engine starts
    assert all(key not in os.environ for key in engines.OFFLINE_ENV)  # then gone again
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's own value stays
    cls("/nonexistent/Qwen3-VL-tiny")
    assert seen[-1]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"

    class FailingLLM(FakeLLM):
        def __init__(self, **kwargs):
            raise RuntimeError("no engine")

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    monkeypatch.setattr(vllm, "LLM", FailingLLM)
    with pytest.raises(RuntimeError, match="no engine"):
        cls("/nonexistent/Qwen3-VL-tiny")
    assert all(key not in os.environ for key in engines.OFFLINE_ENV)
