"""Small pooling responses are built on the API server's event loop, not vLLM's thread pool.

Why: vLLM's pooling endpoints build every response (``PoolingBaseServing._postprocessing``: the
pooled tensors to lists, the JSON body) on the renderer's thread pool. For one embedding that is
little work, and it holds the GIL wherever it runs, so the pool buys no parallelism; it costs a
``submit``, a thread wake-up, the hand-back to the loop, and GIL hand-offs with the loop thread.
py-spy (``--gil``) over 2,400 short texts at c = 8 on the tiny checkpoint:
``ThreadPoolExecutor.submit`` alone was 4 % of the API server's GIL time and the thread's work 5 %.
A response of at most ``settings.INLINE_RESPONSE_VALUES`` values (4,096; env
``QWEN3VL_INLINE_RESPONSE_VALUES``, 0 = always the pool) is now built at once on the loop, in
the request's own context; larger ones (batches) keep the pool, so the loop never stalls on a
big body. The response is the same object either way: the same method builds it.

Example::

    QWEN3VL_INLINE_RESPONSE_VALUES=0 vllm serve Qwen/Qwen3-VL-Embedding-2B   # vLLM's pool for all
"""

from __future__ import annotations

from typing import Any

_SENTINEL = "_qwen3vl_vllm_inline_response"


def response_values(ctx: Any) -> int | None:
    """How many values the response of ``ctx`` carries (the pooled tensors' elements), or None
    when that is not known (nothing collected, an output without a tensor): then the pool."""
    total = 0
    for out in getattr(ctx, "final_res_batch", None) or ():
        numel = getattr(getattr(getattr(out, "outputs", None), "data", None), "numel", None)
        if not callable(numel):
            return None
        total += int(numel())
    return total or None


def postprocessing_async_for(postprocess: Any, pooled: Any, limit: int) -> Any:
    """``_postprocessing_async`` for a pooling server: ``postprocess`` at once when the response
    has at most ``limit`` values (``response_values``), else ``pooled`` (vLLM's, on its pool).
    An error is raised at the await either way."""

    async def postprocessing_async(io_processor, ctx):
        values = response_values(ctx) if limit else None
        if values is not None and values <= limit:
            return postprocess(io_processor, ctx)
        return await pooled(io_processor, ctx)

    return postprocessing_async


def patch() -> str | None:
    """Wrap ``PoolingBaseServing.__init__`` so each pooling server's ``_postprocessing_async``
    builds small responses on the loop (``postprocessing_async_for``, the bound read once per
    server from ``settings.inline_response_values``). Idempotent: None when already installed."""
    from vllm.entrypoints.pooling.base.serving import PoolingBaseServing

    from qwen3vl_vllm.serving.settings import inline_response_values

    original = PoolingBaseServing.__init__
    if getattr(original, _SENTINEL, False):
        return None
    limit = inline_response_values()

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._postprocessing_async = postprocessing_async_for(self._postprocessing, self._postprocessing_async,
                                                              limit)

    setattr(__init__, _SENTINEL, True)
    __init__.__wrapped__ = original
    PoolingBaseServing.__init__ = __init__
    return "PoolingBaseServing.__init__ (small responses on the event loop)"
