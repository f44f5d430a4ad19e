"""Server-side hooks of the plugin: what ``vllm serve`` and the batch runner need beyond the engine.

Every way of starting a server goes through vLLM's argument validation or its app factory
(``python -m vllm.entrypoints.openai.api_server`` only through the latter); both are wrapped
(``patch_serve_validation``) to fill, for a detected checkpoint, the package's chat template,
its middleware (the API key check outermost), the media connector, keep-alive, the HTTP
parser's header bounds (``head_limit``) and the API server count on a GPU
(``apply_serve_defaults``, ``apply_api_server_default``), and to log the media policy the
server exposes. The batch runner, which validates no serve arguments, gets
the same template where it builds its endpoints (``patch_run_batch``).

Example::

    import argparse
    from qwen3vl_vllm.serving.server_hooks import apply_serve_defaults
    args = argparse.Namespace(model_tag="Qwen/Qwen3-VL-Reranker-2B", chat_template=None, middleware=[])
    apply_serve_defaults(args)                       # -> "reranker"; args.chat_template is set
"""

from __future__ import annotations

import logging
import os
from typing import Any

from qwen3vl_vllm.prompts.engine import chat_template_text
from qwen3vl_vllm.serving import engine_hooks
from qwen3vl_vllm.serving.detect import detect_kind
from qwen3vl_vllm.serving.body_pool import (IN_FLIGHT_ENV as BODIES_IN_FLIGHT_ENV, TIMEOUT_ENV as BODY_TIMEOUT_ENV,
                                            body_timeout_s, in_flight_limit)
from qwen3vl_vllm.serving import head_limit
from qwen3vl_vllm.serving.policy import MAX_BODY_ENV, max_body_bytes
from qwen3vl_vllm.serving.request_limits import (MAX_ITEMS_ENV, MAX_REQUEST_TEXT_ENV, MAX_TEXT_ENV, max_items,
                                                  max_request_text_chars, max_text_chars)
from qwen3vl_vllm.serving.settings import (API_SERVER_THREADS, API_SERVER_THREADS_ENV, KEEP_ALIVE_ENV,
                                           KEEP_ALIVE_S, MEDIA_CONNECTOR, MEDIA_CONNECTOR_ENV, MIDDLEWARES,
                                           gpu_api_server_count)

logger = logging.getLogger("vllm.qwen3vl_vllm")  # under vLLM's handlers

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
    # a bad value is refused here, by name
    limit, items, text, total = max_body_bytes(), max_items(), max_text_chars(), max_request_text_chars()
    bodies, body_wait = in_flight_limit(), body_timeout_s()
    logger.info("qwen3vl-vllm: request bodies in flight at most %s (set %s), each awaited at most "
                "%s (set %s); 0 for none", f"{bodies} bytes" if bodies else "any size",
                BODIES_IN_FLIGHT_ENV, f"{body_wait} s" if body_wait else "without end", BODY_TIMEOUT_ENV)
    logger.info("qwen3vl-vllm: request body limit %s (set %s); at most %s items per request (%s), "
                "%s characters per text (%s), %s characters of text per request, a rerank query "
                "once per document (%s); 0 for none", f"{limit} bytes" if limit else "off",
                MAX_BODY_ENV, items or "any number of", MAX_ITEMS_ENV, text or "any number of",
                MAX_TEXT_ENV, total or "any number of", MAX_REQUEST_TEXT_ENV)
    head, head_s = head_limit.max_header_bytes(), head_limit.header_timeout_s()
    head_limit.patch(head, head_s)
    logger.info("qwen3vl-vllm: request line and headers at most %s (set %s), complete within %s of "
                "their first byte (set %s); 0 for none%s", f"{head} bytes" if head else "any size",
                head_limit.HEADER_ENV, f"{head_s} s" if head_s else "any time", head_limit.TIMEOUT_ENV,
                "" if not (head or head_s) or head_limit.installed() else
                " - not installed: no httptools (vLLM bounds the size under uvicorn's h11 parser)")
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
    if getattr(args, "api_server_count", 0) is not None or engine_hooks.on_cpu():
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


def patch_serve_validation(patched: list[str]) -> bool:
    """Wrap vLLM's serve-argument validation (templates, middleware, keep-alive, connector) and
    the app factory, adding what was wrapped to ``patched``; True when at least one entry point
    was found (or already wrapped)."""
    import importlib

    found = _patch_build_app(patched)
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
        patched.append(f"{module_name}.validate_parsed_serve_args")
    return found


def _patch_build_app(patched: list[str]) -> bool:
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
        if apply_serve_defaults(args) is not None and (engine_hooks.on_cpu() or several):
            # this process serves requests (each API server does this): one torch thread where
            # the processes share the cores (CPU) or are many (measured on CPU only)
            apply_api_server_threads()
        return original(args, *a, **kw)

    build_app._qwen3vl_vllm = True
    build_app.__wrapped__ = original
    module.build_app = build_app
    patched.append("api_server.entry.build_app")
    return True


def patch_run_batch() -> str | None:
    """vLLM's batch runner (``python -m vllm.entrypoints.openai.run_batch``) validates no serve
    arguments, so it would run without the package's templates. Its endpoint registry is built
    after the engine (and so this plugin) has started: the chat template is filled in there.
    Only patched when the runner is the running program (its module is already imported)."""
    import sys

    module = sys.modules.get("vllm.entrypoints.launchers.run_batch")
    original = getattr(module, "build_endpoint_registry", None)
    if original is None or getattr(original, "_qwen3vl_vllm", False):
        return None

    async def build_endpoint_registry(engine_client, args, *a, **kw):
        kind = apply_serve_defaults(args)
        registry = await original(engine_client, args, *a, **kw)
        if kind is not None and isinstance(registry, dict):
            _json_embeddings_for_the_runner(registry)
        return registry

    build_endpoint_registry._qwen3vl_vllm = True
    module.build_endpoint_registry = build_endpoint_registry
    return "run_batch.build_endpoint_registry"


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

