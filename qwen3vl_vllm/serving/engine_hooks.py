"""Engine-side hooks of the plugin: a detected checkpoint's engine arguments, in every process.

``EngineArgs.create_model_config`` is wrapped (``patch_engine_args``): for a detected
checkpoint it runs the plugin's start-up gate first, then fills the package's engine settings
(``apply_engine_defaults``: runner, conversion, pooling, pixel bounds, limits; the user's values
win), the CPU platform's defaults (``apply_cpu_defaults``) and an explicit CPU KV cache size
(``size_cpu_kv_cache``). The offline API, ``vllm serve`` and the batch runner all build their
engine through it, so all three get the same settings.

Example::

    from qwen3vl_vllm.serving.engine_hooks import apply_engine_defaults
    from vllm.engine.arg_utils import EngineArgs
    args = EngineArgs(model="Qwen/Qwen3-VL-Embedding-2B")
    apply_engine_defaults(args)                      # -> "embedding"; args.runner == "pooling"
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from qwen3vl_vllm.prompts.engine import (CPU_DEFAULTS_ENV, CPU_ENGINE_DEFAULTS, GIB, RESERVED_CPU_ENV,
                                         cpu_kv_cache_bytes, cpu_reserved_cores, effective_engine_kwargs)
from qwen3vl_vllm.serving.detect import detect_kind
from qwen3vl_vllm.media import split_resize
from qwen3vl_vllm.serving import score_pipeline

logger = logging.getLogger("vllm.qwen3vl_vllm")  # under vLLM's handlers

# EngineArgs values that mean "not set by the user" (then the package's default applies)
_UNSET = {"runner": ("auto",), "convert": ("auto",), "pooler_config": (None,),
          "hf_overrides": (None, {}), "mm_processor_kwargs": (None, {}),
          "media_io_kwargs": (None, {}), "limit_mm_per_prompt": (None, {}),
          "max_model_len": (None,), "max_num_batched_tokens": (None,)}


def apply_engine_defaults(args: Any) -> str | None:
    """Fill an ``EngineArgs`` in place for a detected checkpoint; return the kind.

    What the user set wins, merged by ``settings.effective_engine_kwargs`` (the rule the
    offline API and the launcher use too)."""
    kind = detect_kind(getattr(args, "model", None))
    if kind is None:
        return None
    user = {k: getattr(args, k) for k, unset in _UNSET.items()
            if hasattr(args, k) and not any(getattr(args, k) == u for u in unset)}
    changed = []
    for key, value in effective_engine_kwargs(kind, user).items():
        if key in user and value == user[key]:
            continue
        if key == "pooler_config" and isinstance(value, dict):
            from vllm.config import PoolerConfig

            value = PoolerConfig(**value)
        setattr(args, key, value)
        changed.append(key)
    if changed:
        logger.info("qwen3vl-vllm: %s checkpoint %s: set %s", kind, args.model, ", ".join(changed))
    return kind


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform here (False when that cannot be told)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001
        return False


def apply_cpu_defaults(args: Any) -> list[str]:
    """On the CPU platform, ``settings.CPU_ENGINE_DEFAULTS`` for a detected checkpoint.

    Both are flags whose "off" cannot be told from "not given", so the way out is
    ``QWEN3VL_CPU_DEFAULTS=0`` (logged at start-up). Returns what was set."""
    if os.environ.get(CPU_DEFAULTS_ENV, "1") == "0" or not on_cpu():
        return []
    changed = []
    for key, value in CPU_ENGINE_DEFAULTS.items():
        if getattr(args, key, None) != value:
            setattr(args, key, value)
            changed.append(key)
    from qwen3vl_vllm.serving import shm_spin

    if shm_spin.ENV not in os.environ:  # read by the engine processes started after this
        os.environ[shm_spin.ENV] = shm_spin.CPU_DEFAULT
        changed.append(f"{shm_spin.ENV}={shm_spin.CPU_DEFAULT} (seconds a step queue reader busy-loops)")
    else:
        shm_spin.busy_loop_s()  # a bad value is refused here, by name, before any engine starts
    shm_spin.wake_enabled()  # likewise
    shm_spin.skip_enabled()
    shm_spin.after_write_enabled()
    if RESERVED_CPU_ENV not in os.environ:  # read by the engine processes started after this
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        reserved = cpu_reserved_cores(cores)
        if reserved is not None:
            os.environ[RESERVED_CPU_ENV] = str(reserved)
            changed.append(f"{RESERVED_CPU_ENV}={reserved} ({cores} cores)")
    return changed


def size_cpu_kv_cache(args: Any, model_config: Any) -> int | None:
    """An explicit KV cache size on CPU (so the worker skips its sizing pass), unless the user
    gave one (``--kv-cache-memory-bytes`` or ``VLLM_CPU_KVCACHE_SPACE``)."""
    if (os.environ.get(CPU_DEFAULTS_ENV, "1") == "0" or not on_cpu()
            or getattr(args, "kv_cache_memory_bytes", None) is not None
            or os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
        return None
    text = model_config.hf_text_config
    heads = getattr(text, "num_attention_heads", 1)
    kv = cpu_kv_cache_bytes(
        layers=int(text.num_hidden_layers), kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        dtype_bytes=int(getattr(model_config.dtype, "itemsize", 4)),
        max_num_batched_tokens=int(getattr(args, "max_num_batched_tokens", None) or model_config.max_model_len),
        max_model_len=int(model_config.max_model_len))
    args.kv_cache_memory_bytes = kv
    return kv


def patch_engine_args(gate: Callable[[str, Any], None]) -> str | None:
    """Wrap ``EngineArgs.create_model_config``; ``gate(kind, args)`` runs first for a detected
    checkpoint (it raises to refuse). Returns what was wrapped, or None when already wrapped."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, "_qwen3vl_vllm", False):
        return None

    def create_model_config(self, *a, **kw):
        kind = detect_kind(getattr(self, "model", None))
        if kind is not None:
            gate(kind, self)  # before anything is changed: refuse rather than serve wrongly
            score_pipeline.enabled()  # a bad QWEN3VL_SCORE_PIPELINE is refused by name, before any engine starts
            if split_resize.enabled():  # likewise QWEN3VL_SPLIT_RESIZE
                split_resize.verified()  # its self-check at start-up, not on a request
            apply_engine_defaults(self)
        cpu = apply_cpu_defaults(self) if kind is not None else []
        model_config = original(self, *a, **kw)
        kv = size_cpu_kv_cache(self, model_config) if kind is not None else None
        if kind is not None and on_cpu() and str(getattr(model_config, "dtype", "")) == "torch.float16":
            # oneDNN has no float16 matmul on CPUs without AVX512-FP16/AMX-FP16: vLLM then logs
            # "Failed to create oneDNN linear, fallback to torch linear" (measured: 58 GFLOP/s
            # against 927 in bfloat16 on a 6144x2048 layer, this 2-core AVX512-BF16 box)
            logger.warning("qwen3vl-vllm: float16 on CPU: most CPUs have no fast float16 matmul "
                           "(16x slower than bfloat16 measured); serve with --dtype bfloat16")
        if cpu or kv:
            logger.info("qwen3vl-vllm: CPU platform: %s (no warm-up pass at start-up; set %s=0 "
                        "to keep vLLM's)", ", ".join(cpu + ([f"kv_cache_memory_bytes={kv / GIB:.0f} GiB"]
                                                          if kv else [])), CPU_DEFAULTS_ENV)
        return model_config

    create_model_config._qwen3vl_vllm = True
    EngineArgs.create_model_config = create_model_config
    return "EngineArgs.create_model_config"

