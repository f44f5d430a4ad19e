"""Each document of a rerank or score request goes to the engine as soon as it is rendered.

Why: vLLM's pooling endpoints render every prompt of a request (``asyncio.gather`` over the
renderer's thread pool: the template, the tokeniser, the images' decode, resize and HF
processor) and only then hand all of them to the engine. For a rerank of 20 documents, half of
them images, the tiny checkpoint on this 2-core machine spent ~0.4 s rendering while the model
worker waited, then ~0.75 s in the forward while the API server waited: a single request took
their sum (``benchmarks/frontend.py``, rerank 1x20 at c = 1, 2026-12-07-after-write: API server
20.6 ms and worker 37.2 ms of CPU per pair, 16 pairs/s). Now, when it is the API server's only
scoring request in flight, each document's prompt goes to the engine the moment its render
finishes, so the forward of the first documents overlaps the rendering of the rest (on a GPU
the same overlap hides the forward behind the CPU's rendering).

Only then: with other requests in flight the engine is busy anyway, and documents sent one by
one only make more, smaller engine steps. Sending every request's documents as rendered
(``benchmarks/text_paths.py --kind rerank-1x20``, 12 rounds of 8 requests, 2026-12-07):
c = 1, 1.18x the pairs/s paired by round (every round above 1), at +10 % CPU per pair; c = 8,
1.00x at +7 %. So a request that finds another scoring request of this process in flight is
rendered whole first, as vLLM does (``busy``).

The prompts, the engine requests (ids ``<request id>-<i>``), the scores, their order and the
response are vLLM's: the same methods build them, one document at a time. A document that fails
to render fails the request as before, with the same error; the documents already sent are
aborted (vLLM's ``merge_async_iterators`` cancels them).

Applies to the cross-encoder scoring routes (``/rerank``, ``/v1/rerank``, ``/v2/rerank``,
``/score``); the late-interaction path keeps vLLM's. ``QWEN3VL_SCORE_PIPELINE=0`` renders every
document first, as vLLM does, always.

Example::

    QWEN3VL_SCORE_PIPELINE=0 vllm serve Qwen/Qwen3-VL-Reranker-2B   # vLLM's order: all renders first
"""

from __future__ import annotations

import copy
import logging
from typing import Any

logger = logging.getLogger("vllm.qwen3vl_vllm")
ENV = "QWEN3VL_SCORE_PIPELINE"
_SENTINEL = "_qwen3vl_vllm_score_pipeline"
_PENDING = "_qwen3vl_pending_renders"  # the ctx attribute holding the renders still running
_ON = [True]  # ENV as read when the patch was installed (this process's servers)
_IN_FLIGHT = [0]  # scoring requests of this process between their start and their response


def enabled(environ=None) -> bool:
    """``ENV``: 1 (default) sends each document when rendered; 0 renders all first. Anything
    else is refused by name."""
    import os

    raw = (environ if environ is not None else os.environ).get(ENV, "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{ENV}={raw!r}: use 1 (send each document when rendered) or 0 (render all first)")
    return raw == "1"


def _retrieve(future: Any) -> None:
    """Done callback: read a render's error so a render nobody awaits any more (its request
    already failed) is not reported as an exception never retrieved."""
    if not future.cancelled():
        future.exception()


def start_renders(io_processor: Any, ctx: Any) -> bool:
    """Start rendering every prompt of ``ctx`` and leave them running (``ctx.engine_inputs``
    holds a place for each, filled as they finish). False, with nothing started, for a request
    with no prompt (vLLM's path refuses it with its own message)."""
    import asyncio

    requests = io_processor.get_request_factory_online(ctx)
    if not requests:
        return False
    pending = [asyncio.ensure_future(io_processor.render_async(r)) for r in requests]
    for fut in pending:
        fut.add_done_callback(_retrieve)
    ctx.engine_inputs = [None] * len(pending)
    setattr(ctx, _PENDING, pending)
    return True


async def _one(prepare: Any, serving: Any, ctx: Any, i: int, pending: Any):
    """The outputs of prompt ``i``: await its render, then hand it to the engine through vLLM's
    own ``_prepare_generators`` on a copy of ``ctx`` that holds this prompt alone."""
    engine_input = await pending
    ctx.engine_inputs[i] = engine_input
    one = copy.copy(ctx)
    one.engine_inputs = [engine_input]
    one.prompt_request_ids = [f"{ctx.request_id}-{i}" if ctx.prompt_request_ids is None
                              else ctx.prompt_request_ids[i]]
    await prepare(serving, one)
    async for _, out in one.result_generator:
        yield out


def busy() -> bool:
    """Another scoring request of this process is in flight (this one counts itself): its
    documents keep the engine busy, so this one's are rendered whole first."""
    return _IN_FLIGHT[0] > 1


def patch() -> str | None:
    """Wrap ``ServingScores.__call__`` (to count the requests in flight), ``._preprocessing``
    and ``._prepare_generators``: for a request alone in flight the second starts the renders
    and returns (``start_renders``), the third merges one generator per prompt (``_one``) with
    vLLM's ``merge_async_iterators``. Idempotent: None when already installed."""
    from vllm.entrypoints.pooling.scoring.serving import ServingScores
    from vllm.utils.async_utils import merge_async_iterators

    original_call = ServingScores.__call__
    original_pre, original_prepare = ServingScores._preprocessing, ServingScores._prepare_generators
    if getattr(original_pre, _SENTINEL, False):
        return None
    _ON[0] = on = enabled()

    async def __call__(self, *args, **kwargs):
        _IN_FLIGHT[0] += 1
        try:
            return await original_call(self, *args, **kwargs)
        finally:
            _IN_FLIGHT[0] -= 1

    async def _preprocessing(self, io_processor, ctx):
        if (_ON[0] and not busy() and not getattr(self, "enable_flash_late_interaction", False)
                and start_renders(io_processor, ctx)):
            return
        await original_pre(self, io_processor, ctx)

    async def _prepare_generators(self, ctx):
        pending = getattr(ctx, _PENDING, None)
        if pending is None:
            return await original_prepare(self, ctx)
        delattr(ctx, _PENDING)
        ctx.result_generator = merge_async_iterators(
            *[_one(original_prepare, self, ctx, i, fut) for i, fut in enumerate(pending)])

    for new, old in ((__call__, original_call), (_preprocessing, original_pre),
                     (_prepare_generators, original_prepare)):
        setattr(new, _SENTINEL, True)
        new.__wrapped__ = old
        new.__name__, new.__qualname__ = old.__name__, old.__qualname__
    ServingScores.__call__ = __call__
    ServingScores._preprocessing, ServingScores._prepare_generators = _preprocessing, _prepare_generators
    if not on:
        logger.info("qwen3vl-vllm: %s=0: each rerank document is rendered before any is scored", ENV)
    return "ServingScores.__call__, ._preprocessing, ._prepare_generators (documents sent as rendered)"
