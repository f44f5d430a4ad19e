"""The reference's truncation of over-long reranker pairs, on the server (vLLM 0.32 patch).

Why: the reference tokenises the whole (query, document) prompt and, when its body (all but the
5-token suffix) is longer than ``max_length`` (10,240), keeps every special token of the body and
the first plain tokens that still fit, then re-appends the suffix (upstream ``tokenize``). vLLM 0.32 rejects such a pair with a
400 instead, so plain ``/rerank`` and ``/score`` requests (curl, the openai SDK) could not get
the reference's score. vLLM has no extension point for this, so ``patch()`` wraps
``CrossEncoderIOProcessor.get_score_prompt``: the one place where vLLM holds the pair's token
ids and its loaded media, before anything checks the length. It cuts the ids with
``truncation.truncate_pair_tokens``, the rule the offline API uses too (the reference has its own
copy, written separately, which the parity tests compare against).

- Only checkpoints the plugin detects as rerankers are touched; other models are unchanged.
- Each image counts as the pad tokens the engine expands it to (one per 32x32 pixels after the
  server's own resize), as in the reference, which counts the expanded prompt.
- A pair containing a video is left to the video rule (``video_fit``), which runs once the
  video's expanded length is known: fewer frames until the pair fits, or a 400 naming why not.

Example (what a plain HTTP client now gets for a 12,000-token document)::

    curl -s localhost:8001/v1/rerank -H 'content-type: application/json' \\
      -d '{"query": "q", "documents": ["<12,000 tokens of text>"]}'   # 200, reference score
"""

from __future__ import annotations

import logging
from typing import Any

from qwen3vl_vllm.serving.detect import detect_kind
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, IMAGE_FACTOR, NULL_TEXT, RERANK_MAX_LENGTH
from qwen3vl_vllm.media.decode import smart_resize
from qwen3vl_vllm.prompts.truncation import RERANK_SUFFIX_TOKENS, truncate_pair_tokens
from qwen3vl_vllm.prompts.engine import image_tokens

logger = logging.getLogger("vllm.qwen3vl_vllm")
_SENTINEL = "_qwen3vl_vllm_truncation"


def image_token_count(width: int, height: int, *, min_pixels: float, max_pixels: float) -> int:
    """Pad tokens one image expands to: the server's resize (a no-op for images the media
    connector already prepared), then one token per 32x32 pixels."""
    h, w = smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return image_tokens(w, h)


def fit_pair_ids(ids: list[int], special_ids: set[int], image_sizes: list[tuple[int, int]], *,
                 max_length: int, min_pixels: float, max_pixels: float) -> list[int]:
    """The pair's token ids as the reference keeps them (unchanged when they fit).

    ``ids`` hold one unexpanded pad per image; ``image_sizes`` are (width, height) in order.

    >>> fit_pair_ids([1, 2, 3, 4, 5, 6, 7, 8], {1}, [], max_length=7, min_pixels=1, max_pixels=9)
    [1, 2, 4, 5, 6, 7, 8]
    """
    extra = sum(image_token_count(w, h, min_pixels=min_pixels, max_pixels=max_pixels) - 1
                for w, h in image_sizes)
    if len(ids) + extra - RERANK_SUFFIX_TOKENS <= max_length:
        return ids
    return truncate_pair_tokens(ids, special_ids, max_length, extra_special=extra)


def pixel_bounds(model_config: Any) -> tuple[float, float]:
    """The served image pixel bounds (the plugin's ``images_kwargs``, else the reference's)."""
    mm = getattr(getattr(model_config, "multimodal_config", None), "mm_processor_kwargs", None) or {}
    images = mm.get("images_kwargs") or {}
    return (float(images.get("min_pixels", mm.get("min_pixels", DEFAULT_SETTINGS.min_pixels))),
            float(images.get("max_pixels", mm.get("max_pixels", DEFAULT_SETTINGS.max_pixels))))


def _settings(processor: Any) -> dict | None:
    """Per-processor settings, or None when the served model is not a Qwen3-VL reranker."""
    cached = getattr(processor, _SENTINEL, False)
    if cached is not False:
        return cached
    model_config = processor.model_config
    settings = None
    if detect_kind(getattr(model_config, "model", None)) == "reranker":
        lo, hi = pixel_bounds(model_config)
        body_max = int(model_config.max_model_len) - RERANK_SUFFIX_TOKENS
        settings = {"max_length": min(body_max, RERANK_MAX_LENGTH),
                    "special": set(processor.tokenizer.all_special_ids),
                    "min_pixels": lo, "max_pixels": hi}
    setattr(processor, _SENTINEL, settings)
    return settings


def _image_sizes(mm_data: Any) -> list[tuple[int, int]] | None:
    """(width, height) of each image, or None when the pair cannot be counted (videos...)."""
    if not mm_data:
        return []
    if any(mm_data.get(k) for k in mm_data if k != "image"):
        return None
    images = mm_data.get("image") or []
    images = images if isinstance(images, list) else [images]
    sizes = []
    for im in images:
        size = getattr(im, "size", None)  # PIL images, as vLLM's media connector loads them
        if not (isinstance(size, tuple) and len(size) == 2):
            return None
        sizes.append(size)
    return sizes


def truncate_engine_prompt(processor: Any, engine_prompt: dict, full_prompt: Any,
                           encode_kwargs: dict | None, *, whole: bool = False) -> None:
    """Cut ``engine_prompt``'s token ids in place when the pair is over the reference's length.

    vLLM tokenises with ``max_length = max_model_len + 1`` (enough to refuse a long prompt), which
    drops the prompt's end, suffix included. Unless the ids are ``whole`` (the patch asks vLLM
    for them untruncated: ``whole_encode_kwargs``), a pair that long is tokenised again in
    full, as the reference does, before the cut.
    """
    settings = _settings(processor)
    ids = engine_prompt.get("prompt_token_ids")
    if settings is None or not isinstance(ids, list):
        return
    sizes = _image_sizes(engine_prompt.get("multi_modal_data"))
    if sizes is None:
        return
    if not whole and len(ids) > settings["max_length"] + RERANK_SUFFIX_TOKENS and isinstance(full_prompt, str):
        add_special = (encode_kwargs or {}).get("add_special_tokens", True)
        ids = list(processor.tokenizer(full_prompt, add_special_tokens=add_special,
                                       truncation=False)["input_ids"])
    fitted = fit_pair_ids(ids, settings["special"], sizes, max_length=settings["max_length"],
                          min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"])
    if fitted is not ids:
        engine_prompt["prompt_token_ids"] = fitted
        logger.debug("qwen3vl-vllm: reranker pair cut from %d to %d ids (reference truncation)",
                     len(ids), len(fitted))


def whole_encode_kwargs(args: tuple, kwargs: dict) -> tuple[tuple, dict, bool]:
    """``get_score_prompt``'s arguments with its ``encode_kwargs`` asking for the whole prompt
    (``truncation=False``, no ``max_length``), and whether they were found. vLLM's cut at
    ``max_model_len + 1`` tokenises the whole text anyway (a fast tokenizer truncates after
    encoding), so asking for it whole saves the second tokenisation the reference's cut would
    need: half the time of a long pair (a 3 M-character document took 8 s with both)."""
    def whole(encode_kwargs):
        out = {k: v for k, v in (encode_kwargs or {}).items() if k != "max_length"}
        out["truncation"] = False
        return out

    if "encode_kwargs" in kwargs:
        return args, {**kwargs, "encode_kwargs": whole(kwargs["encode_kwargs"])}, True
    if args:
        return (whole(args[0]), *args[1:]), kwargs, True
    return args, kwargs, False  # not passed: the re-tokenisation cuts as before


def _part_text(part: Any) -> str | None:
    """The text of a text content part (a dict or a pydantic part), else None."""
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    if kind != "text":
        return None
    text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
    return text if isinstance(text, str) else None


def reference_side(data: Any) -> Any:
    """One side of a pair as the reference renders it (SPEC §2).

    - No content at all (``{"content": []}``) is the text "NULL"; an empty string stays an
      empty text part.
    - Several text parts are one text, concatenated with nothing between them: the reference
      renders each part right after the other, while vLLM's score parser joins a side's texts
      with "\n" (|score difference| up to 0.02 on the tiny checkpoint). Media parts stay as
      they are (vLLM puts them before the text, as the reference orders them).
    """
    if not isinstance(data, list):
        return data
    if not data:
        return NULL_TEXT
    texts = [_part_text(p) for p in data]
    if sum(t is not None for t in texts) < 2:
        return data
    media = [p for p, t in zip(data, texts) if t is None]
    return media + [{"type": "text", "text": "".join(t for t in texts if t is not None)}]


def patch() -> str | None:
    """Wrap ``CrossEncoderIOProcessor.get_score_prompt`` once; returns what was patched."""
    from vllm.entrypoints.pooling.scoring.io_processor import CrossEncoderIOProcessor

    original = CrossEncoderIOProcessor.get_score_prompt
    if getattr(original, _SENTINEL, False):
        return None

    def get_score_prompt(self, data_1, data_2, *args, **kwargs):
        whole = False
        if _settings(self) is not None:
            data_1, data_2 = reference_side(data_1), reference_side(data_2)
            args, kwargs, whole = whole_encode_kwargs(args, kwargs)
        full_prompt, engine_prompt = original(self, data_1, data_2, *args, **kwargs)
        encode_kwargs = kwargs.get("encode_kwargs", args[0] if args else None)
        truncate_engine_prompt(self, engine_prompt, full_prompt, encode_kwargs, whole=whole)
        return full_prompt, engine_prompt

    setattr(get_score_prompt, _SENTINEL, True)
    get_score_prompt.__wrapped__ = original
    CrossEncoderIOProcessor.get_score_prompt = get_score_prompt
    return "CrossEncoderIOProcessor.get_score_prompt"
