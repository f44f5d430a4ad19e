"""Server-side reference truncation of over-long reranker pairs, with fakes for vLLM's pieces."""

from __future__ import annotations

import types

import pytest

from qwen3vl_vllm.serving import score_truncation as st
from qwen3vl_vllm.prompts.truncation import RERANK_SUFFIX_TOKENS

SPECIAL = {900, 901, 902}  # 900 = an image pad, 901/902 other specials
PIX = dict(min_pixels=4096, max_pixels=1843200)


def _reference_cut(expanded: list[int], max_length: int) -> list[int]:
    """Upstream's rule on the *expanded* ids, written out independently of the package: the body
    (all but the 5-token suffix) is cut to ``max_length`` when longer, then the suffix put back."""
    body, tail = expanded[:-RERANK_SUFFIX_TOKENS], expanded[-RERANK_SUFFIX_TOKENS:]
    if len(body) <= max_length:
        return expanded
    budget = max_length - sum(t in SPECIAL for t in body)
    out = []
    for t in body:
        if t in SPECIAL:
            out.append(t)
        elif budget > 0:
            out.append(t)
            budget -= 1
    return out + tail


def _expand(ids: list[int], pads: list[int]) -> list[int]:
    out, k = [], 0
    for t in ids:
        if t == 900:
            out += [900] * pads[k]
            k += 1
        else:
            out.append(t)
    return out


def test_image_token_count_matches_the_32px_grid():
    assert st.image_token_count(160, 96, **PIX) == 5 * 3
    assert st.image_token_count(150, 100, **PIX) == 5 * 3  # resized to 160x96 first
    assert st.image_token_count(10, 10, **PIX) == 4  # raised to min_pixels: 64x64


@pytest.mark.parametrize("n_plain,sizes", [(50, []), (50, [(160, 96)]), (80, [(64, 64), (96, 64)]),
                                           (10, [(160, 96)])])
def test_fit_equals_the_reference_on_expanded_ids(n_plain, sizes):
    ids = [901] + [900] * len(sizes) + list(range(1, n_plain + 1)) + [902, 5, 901, 6, 7]
    pads = [st.image_token_count(w, h, **PIX) for w, h in sizes]
    max_length = 40
    fitted = st.fit_pair_ids(ids, SPECIAL, sizes, max_length=max_length, **PIX)
    expected = _reference_cut(_expand(ids, pads), max_length)
    assert _expand(fitted, pads) == expected
    assert len(_expand(fitted, pads)) <= max_length + RERANK_SUFFIX_TOKENS


def test_fitting_pair_is_the_same_object():
    ids = [901, 1, 2, 902, 5, 901, 6, 7]
    assert st.fit_pair_ids(ids, SPECIAL, [], max_length=100, **PIX) is ids


class _Tok:
    all_special_ids = sorted(SPECIAL)

    def __init__(self, full_ids):
        self.full_ids = full_ids
        self.calls = []

    def __call__(self, text, **kw):
        self.calls.append(kw)
        return {"input_ids": list(self.full_ids)}


def _processor(model: str, max_model_len: int, tok):
    mm = types.SimpleNamespace(mm_processor_kwargs={"images_kwargs": {"min_pixels": 4096,
                                                                      "max_pixels": 1843200}})
    cfg = types.SimpleNamespace(model=model, max_model_len=max_model_len, multimodal_config=mm)
    return types.SimpleNamespace(model_config=cfg, tokenizer=tok)


def test_capped_tokenisation_is_redone_in_full(monkeypatch):
    monkeypatch.delenv("QWEN3VL_VLLM_KIND", raising=False)
    full = [901] + list(range(1, 60)) + [902, 5, 901, 6, 7]
    tok = _Tok(full)
    proc = _processor("Qwen/Qwen3-VL-Reranker-2B", 30, tok)
    prompt = {"prompt_token_ids": full[:31]}  # vLLM cut at max_model_len + 1: suffix lost
    st.truncate_engine_prompt(proc, prompt, "the full prompt", {"add_special_tokens": False})
    assert tok.calls == [{"add_special_tokens": False, "truncation": False}]
    assert prompt["prompt_token_ids"] == _reference_cut(full, 30 - RERANK_SUFFIX_TOKENS)
    assert prompt["prompt_token_ids"][-RERANK_SUFFIX_TOKENS:] == [902, 5, 901, 6, 7]


def test_other_models_and_videos_are_left_alone(monkeypatch):
    monkeypatch.delenv("QWEN3VL_VLLM_KIND", raising=False)
    full = list(range(1, 80))
    for model, mm in (("Qwen/Qwen3-VL-2B-Instruct", None), ("Qwen/Qwen3-VL-Embedding-2B", None),
                      ("Qwen/Qwen3-VL-Reranker-2B", {"video": [object()]})):
        prompt = {"prompt_token_ids": full[:31], "multi_modal_data": mm}
        st.truncate_engine_prompt(_processor(model, 30, _Tok(full)), prompt, "p", {})
        assert prompt["prompt_token_ids"] == full[:31], model


def test_max_length_never_exceeds_the_reference(monkeypatch):
    monkeypatch.delenv("QWEN3VL_VLLM_KIND", raising=False)
    proc = _processor("Qwen/Qwen3-VL-Reranker-2B", 32768, _Tok([]))
    assert st._settings(proc)["max_length"] == 10240


def test_patch_is_idempotent_and_marked():
    from vllm.entrypoints.pooling.scoring.io_processor import CrossEncoderIOProcessor

    st.patch()
    first = CrossEncoderIOProcessor.get_score_prompt
    assert st.patch() is None and CrossEncoderIOProcessor.get_score_prompt is first
    assert getattr(first, st._SENTINEL)


def test_text_parts_of_a_side_are_concatenated_as_the_reference_does():
    """vLLM joins a side's text parts with "\\n"; the reference puts them one after the other."""
    from qwen3vl_vllm.serving.score_truncation import reference_side

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,x"}}
    texts = [{"type": "text", "text": "first, "}, {"type": "text", "text": "second"},
             {"type": "text", "text": ""}]
    assert reference_side(texts) == [{"type": "text", "text": "first, second"}]
    assert reference_side([image, *texts]) == [image, {"type": "text", "text": "first, second"}]
    assert reference_side([texts[0], image]) == [texts[0], image]  # one text part: as given
    assert reference_side([]) == "NULL" and reference_side("") == "" and reference_side("q") == "q"


def test_the_patch_asks_vllm_for_the_whole_prompt_once(monkeypatch):
    """A long pair is tokenised once: vLLM is asked for the whole prompt (no max_length, no
    truncation), and the cut works on those ids without a second tokenisation."""
    monkeypatch.delenv("QWEN3VL_VLLM_KIND", raising=False)
    capped = {"add_special_tokens": False, "truncation": True, "max_length": 31}
    args, kwargs, found = st.whole_encode_kwargs((capped, "tmpl"), {})
    assert args == ({"add_special_tokens": False, "truncation": False}, "tmpl") and kwargs == {} and found
    args, kwargs, found = st.whole_encode_kwargs((), {"encode_kwargs": capped, "chat_template": None})
    assert kwargs == {"encode_kwargs": {"add_special_tokens": False, "truncation": False}, "chat_template": None}
    assert found and st.whole_encode_kwargs((), {"chat_template": None}) == ((), {"chat_template": None}, False)
    assert capped["max_length"] == 31  # the caller's dict is not changed
    full = [901] + list(range(1, 60)) + [902, 5, 901, 6, 7]
    tok = _Tok(full)
    prompt = {"prompt_token_ids": list(full)}
    st.truncate_engine_prompt(_processor("Qwen/Qwen3-VL-Reranker-2B", 30, tok), prompt, "p",
                              args[0] if args else kwargs["encode_kwargs"], whole=True)
    assert tok.calls == []
    assert prompt["prompt_token_ids"] == _reference_cut(full, 30 - RERANK_SUFFIX_TOKENS)
