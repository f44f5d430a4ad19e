"""What only the HTTP server is given, in one place, free of vLLM imports: the middlewares, the
keep-alive, the media connector and where it may take media from. The engine settings per kind
(which the offline API shares) are in ``qwen3vl_vllm.prompts.engine``.
"""

from __future__ import annotations

# Server-side pieces the plugin adds to `vllm serve` through vLLM's --middleware option, after
# any of the user's. Starlette puts each added middleware outside the ones before it, so the
# last is the first to see a request: the API key (nothing is read before it), then the limits
# and the request's decode budget, then error naming, then the video-frames header.
MIDDLEWARES = ("qwen3vl_vllm.serving.video_fit_hook.FramesHeaderMiddleware",
               "qwen3vl_vllm.serving.error_naming.NameBadItemsMiddleware",
               "qwen3vl_vllm.serving.policy.PolicyMiddleware",
               "qwen3vl_vllm.serving.auth.ApiKeyMiddleware")
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
# Where the server may take media from (``media_connector``): data URLs always; http(s) URLs only
# when enabled (this variable, or --allowed-media-domains), public addresses only (the exact
# origins listed in QWEN3VL_MEDIA_ALLOWED_ORIGINS excepted); file:// only inside
# --allowed-local-media-path (vLLM's flag, off by default).
REMOTE_MEDIA_ENV = "QWEN3VL_REMOTE_MEDIA"
MEDIA_ORIGINS_ENV = "QWEN3VL_MEDIA_ALLOWED_ORIGINS"
# the "no domain" the launcher gives plain vLLM (--allowed-media-domains) when fetches are off
REMOTE_OFF_DOMAIN = "remote-fetch-is-off.invalid"


def __getattr__(name: str):
    """The flat ``qwen3vl_vllm.settings`` (now this module, see ``_moved``) also held the engine
    settings per kind; under the old name they still resolve, from ``prompts.engine``."""
    from qwen3vl_vllm.prompts import engine

    try:
        return getattr(engine, name)
    except AttributeError:
        raise AttributeError(f"module 'qwen3vl_vllm.serving.settings' has no attribute {name!r}") from None


# API server processes on a GPU box when the user names none (``--api-server-count``). One API
# server process prepares requests on about one core: template, decode, resize, HF processor,
# hashing (benchmarks/frontend.py, account.py). A GPU embeds more items per second than one core
# prepares (docs/serving-cost.md "The GPU, on paper", 2B on an H100 at 40 % MFU: 1-3 API servers
# for texts, photos and screenshots, 7-8 for rerank sets, videos and frame lists). So: one per two usable
# cores beyond the two kept for the engine core and the OS, at most GPU_API_SERVERS_MAX (8, the
# table's largest need rounded up; each API server holds its own tokenizer and processor).
GPU_API_SERVERS_MAX = 8
GPU_CORES_KEPT = 2


def gpu_api_server_count(usable_cores: int) -> int:
    """API servers for a GPU server with ``usable_cores`` cores and no ``--api-server-count``.

    >>> [gpu_api_server_count(n) for n in (1, 4, 8, 16, 64)]
    [1, 1, 3, 7, 8]
    """
    return max(1, min(GPU_API_SERVERS_MAX, (usable_cores - GPU_CORES_KEPT) // 2))


# torch's intra-op threads in each API server process (media resizing, the HF processor). The
# API server's requests run in parallel across requests and API server processes; a pool per
# process spins between its parallel regions on the cores the model needs. Measured with
# benchmarks/account.py (2 cores, c = 8, 10-frame lists): API server CPU 223 -> 110 ms per clip,
# 5.0 -> 7.2 clips/s; 512x512 photos unchanged (10.2 -> 10.3 ms, 34.6 -> 36.9/s).
# QWEN3VL_API_SERVER_THREADS=N sets another count; 0 keeps torch's own (one per core).
API_SERVER_THREADS_ENV = "QWEN3VL_API_SERVER_THREADS"
API_SERVER_THREADS = 1

# A prompt of text only, this many characters at most, is rendered (tokenised) on the API
# server's event loop instead of vLLM's render thread pool (``video_fit_hook``): for a short
# text the hand-off to the thread and back costs more than the tokenising (~0.1 ms). Longer
# texts and prompts with media keep the pool, so the loop never waits on a long render.
# QWEN3VL_INLINE_RENDER_CHARS=N sets another bound; 0 renders every prompt on the pool.
INLINE_RENDER_ENV = "QWEN3VL_INLINE_RENDER_CHARS"
INLINE_RENDER_CHARS = 2000


def _bound(environ, env: str, default: int, unit: str) -> int:
    """A whole-number bound from ``env`` (else ``default``); a bad value is refused by name."""
    import os

    raw = (environ if environ is not None else os.environ).get(env, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a whole number of {unit}; "
                         f"use e.g. {env}=0 (always the thread pool)") from None
    if value < 0:
        raise ValueError(f"{env}={raw!r} must be >= 0")
    return value


def inline_render_chars(environ=None) -> int:
    """The bound in effect (``INLINE_RENDER_ENV`` else ``INLINE_RENDER_CHARS``); a bad value is
    refused by name."""
    return _bound(environ, INLINE_RENDER_ENV, INLINE_RENDER_CHARS, "characters")


# A pooling response of at most this many values (embedding floats, scores) is built on the
# event loop instead of vLLM's thread pool (``inline_response``): turning a few thousand floats
# into JSON holds the GIL wherever it runs, so the pool adds only its hand-off, the thread's
# wake-up and the loop's. 4,096 is one 8B embedding or two 2B ones; larger responses (batches)
# keep the pool. QWEN3VL_INLINE_RESPONSE_VALUES=N sets another bound; 0 builds every response
# on the pool.
INLINE_RESPONSE_ENV = "QWEN3VL_INLINE_RESPONSE_VALUES"
INLINE_RESPONSE_VALUES = 4096


def inline_response_values(environ=None) -> int:
    """The bound in effect (``INLINE_RESPONSE_ENV`` else ``INLINE_RESPONSE_VALUES``); a bad value
    is refused by name."""
    return _bound(environ, INLINE_RESPONSE_ENV, INLINE_RESPONSE_VALUES, "values")
