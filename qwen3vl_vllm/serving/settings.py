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
