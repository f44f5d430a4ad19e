"""Where the video fitting rule (``video_fit``) meets vLLM (marked and guarded patches, named in the contract check).

- ``BaseRenderer._process_multimodal``: the one place every path (offline ``LLM``, chat
  ``messages``, ``/v1/embeddings``, ``/score``, ``/rerank``, the batch runner) meets after the
  media were prepared and before vLLM checks the prompt's length. For detected checkpoints only,
  a prompt with prepared videos is measured and, when too long, its videos are given fewer
  frames (or refused) as ``video_fit`` decides. The result is re-measured after vLLM expands it.
- ``BaseRenderer._process_tokens(_async)``: hands the report (frames used of prepared, prompt
  tokens) to the caller's collector: the request's (``FramesHeaderMiddleware`` turns it into the
  ``X-Qwen3VL-Video-Frames`` header) or the offline call's (``collecting``).
- ``PoolingIOProcessor.__init__``: its ``render_async`` runs on a thread pool without the
  request's context variables; the same executor now runs it inside a copy of that context.

Example (offline; the server needs nothing but the plugin)::

    with collecting() as reports:
        llm.embed(prompts)          # reports: [{"frames": [(52, 60)], "prompt_tokens": 8052, ...}]
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

from qwen3vl_vllm.prompts.video_fit import (HEADER, MODE_HEADER, MODES, TEMPORAL, PreparedVideo,
                                            VideoFitError, fit_prompt, header_value, mode)
# the report channel, shared with the offline API (which must not import this module)
from qwen3vl_vllm.prompts.video_reports import (KEY as _KEY, MODE as _MODE, REPORTS as _REPORTS,
                                                collecting, current_mode as _current_mode,
                                                deliver as _deliver)

logger = logging.getLogger("vllm.qwen3vl_vllm")

_SENTINEL = "_qwen3vl_vllm_video_fit"

__all__ = ["FramesHeaderMiddleware", "collecting", "patch", "process_multimodal"]


async def _refuse_header(send, value: str) -> None:
    import json

    body = json.dumps({"error": {
        "message": f"{MODE_HEADER}: {value!r} is not one of {', '.join(MODES)}. Send fit or refuse, "
                   "or leave the header out for the server's setting",
        "type": "BadRequestError", "param": MODE_HEADER, "code": 400}}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class FramesHeaderMiddleware:
    """ASGI middleware: adds ``X-Qwen3VL-Video-Frames`` to responses whose prompts had videos,
    and applies a request's ``X-Qwen3VL-Video-Fit: fit|refuse`` (the server's setting otherwise)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        asked = dict(scope.get("headers") or []).get(MODE_HEADER.encode())
        if asked is not None:
            value = asked.decode("latin-1").strip().lower()
            if value not in MODES:
                return await _refuse_header(send, value)
        reports: list = []
        token = _REPORTS.set(reports)
        mode_token = _MODE.set(value if asked is not None else None)

        async def send_with_header(message):
            if message.get("type") == "http.response.start" and reports:
                value = header_value(reports)
                if value:
                    headers = list(message.get("headers") or [])
                    headers.append((HEADER.encode(), value.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _REPORTS.reset(token)
            _MODE.reset(mode_token)


def _renderer_settings(renderer: Any) -> dict | None:
    cached = getattr(renderer, _SENTINEL, False)
    if cached is not False:
        return cached
    from qwen3vl_vllm.serving.detect import detect_kind

    model_config = renderer.model_config
    settings = None
    if detect_kind(getattr(model_config, "model", None)) is not None:
        from qwen3vl_vllm.serving.score_truncation import pixel_bounds

        lo, hi = pixel_bounds(model_config)
        settings = {"limit": int(model_config.max_model_len), "min_pixels": lo, "max_pixels": hi,
                    "ts": {}}
    setattr(renderer, _SENTINEL, settings)
    return settings


def _image_extra(images: Any, settings: dict) -> int:
    """What the prompt's images add: their pad tokens (``score_truncation.image_token_count``),
    less the one pad each holds unexpanded."""
    from qwen3vl_vllm.serving.score_truncation import image_token_count

    extra = 0
    for im in images if isinstance(images, list) else [images]:
        size = getattr(im, "size", None)
        if isinstance(size, tuple) and len(size) == 2:
            w, h = size
        else:
            shape = getattr(im, "shape", None)
            if not shape or len(shape) != 3:
                continue
            h, w = int(shape[0]), int(shape[1])
        extra += image_token_count(w, h, min_pixels=settings["min_pixels"],
                                   max_pixels=settings["max_pixels"]) - 1
    return extra


def _prompt_len(result: Any) -> int:
    return len(result["prompt_token_ids"])


def process_multimodal(renderer: Any, original: Callable, prompt: list[int], mm_data: Any,
                       *args: Any, **kwargs: Any) -> Any:
    """``BaseRenderer._process_multimodal`` with the fitting rule applied to videos."""
    settings = _renderer_settings(renderer)
    raw = mm_data.get("video") if settings is not None and isinstance(mm_data, dict) else None
    if not raw:
        return original(renderer, prompt, mm_data, *args, **kwargs)
    items = raw if isinstance(raw, list) else [raw]
    try:
        videos = [PreparedVideo(item) for item in items]
    except (TypeError, ValueError, KeyError):
        return original(renderer, prompt, mm_data, *args, **kwargs)  # not prepared by the package
    fit_mode = _current_mode()
    limit = settings["limit"]
    tokenizer = renderer.get_tokenizer()
    cache = settings["ts"]

    def ts_len(t: float) -> int:
        text = f"<{t:.1f} seconds>"
        if text not in cache:
            if len(cache) > 65536:
                cache.clear()
            cache[text] = len(tokenizer.encode(text, add_special_tokens=False))
        return cache[text]

    extra = _image_extra(mm_data.get("image") or [], settings) if mm_data.get("image") else 0
    cap = fit_prompt(len(prompt), videos, limit=limit, extra=extra, ts_len=ts_len, fit_mode=fit_mode)

    args, kwargs = _frames_as_given(args, kwargs)

    def run(cap: int | None):
        if cap is None:
            return original(renderer, prompt, mm_data, *args, **kwargs), [v.n for v in videos]
        fitted = [v.subset(cap) if v.n > cap else items[i] for i, v in enumerate(videos)]
        data = {**mm_data, "video": fitted if isinstance(raw, list) else fitted[0]}
        uuids = _fitted_uuids(kwargs.get("mm_uuids", args[0] if args else None), videos, cap)
        call_args, call_kwargs = _with_uuids(args, kwargs, uuids)
        return original(renderer, prompt, data, *call_args, **call_kwargs), [min(v.n, cap) for v in videos]

    result, used = run(cap)
    n = _prompt_len(result)
    while n > limit and fit_mode == "fit":
        # the estimate was short (a processor that expands differently): step down and re-check
        top = cap if cap is not None else max(v.n for v in videos)
        cap = top - TEMPORAL - (top % TEMPORAL)
        if cap < TEMPORAL:
            break  # left to vLLM, which refuses it by length
        result, used = run(cap)
        n = _prompt_len(result)
    if cap is not None:
        logger.info("qwen3vl-vllm: video(s) fitted to max_model_len=%d: %s frames (prompt %d tokens)",
                    limit, ", ".join(f"{u}/{v.n}" for u, v in zip(used, videos)), n)
    result[_KEY] = {"frames": [(u, v.n) for u, v in zip(used, videos)], "prompt_tokens": n}
    return result


def _fitted_uuids(uuids: Any, videos: list[PreparedVideo], cap: int) -> Any:
    """Caller-given video ids, made distinct for a fitted video (its content differs)."""
    if not isinstance(uuids, dict) or not uuids.get("video"):
        return uuids
    ids = uuids["video"]
    listed = ids if isinstance(ids, list) else [ids]
    new = [f"{u}#frames={min(v.n, cap)}" if (u is not None and v.n > cap) else u
           for u, v in zip(listed, videos)]
    return {**uuids, "video": new if isinstance(ids, list) else new[0]}


def _frames_as_given(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The HF video processor told not to resize: the package's media connector hands it each
    clip at the reference's size already (the reference calls it with ``do_resize=False`` too).
    Without this it shrinks a clip whose frames x height x width pass its own cap (25,165,824):
    a 64-frame 1080p minute at the reference's 640x1152 came out 448x832 once ``max_model_len``
    let all its frames in. Only where the package's connector prepares the videos; the offline
    API passes ``do_resize=False`` itself."""
    import os

    from qwen3vl_vllm.serving.settings import MEDIA_CONNECTOR, MEDIA_CONNECTOR_ENV

    if os.environ.get(MEDIA_CONNECTOR_ENV) != MEDIA_CONNECTOR:
        return args, kwargs
    given = kwargs.get("mm_processor_kwargs", args[1] if len(args) > 1 else None) or {}
    merged = {**given, "videos_kwargs": {**(given.get("videos_kwargs") or {}), "do_resize": False}}
    if "mm_processor_kwargs" in kwargs or len(args) < 2:
        return args, {**kwargs, "mm_processor_kwargs": merged}
    return (args[0], merged, *args[2:]), kwargs


def _with_uuids(args: tuple, kwargs: dict, uuids: Any) -> tuple[tuple, dict]:
    if "mm_uuids" in kwargs or not args:
        return args, {**kwargs, "mm_uuids": uuids}
    return (uuids, *args[1:]), kwargs


def patch() -> str | None:
    """Wrap the renderer's multimodal step (fitting) and its token steps (reports); once."""
    from vllm.renderers.base import BaseRenderer

    original = BaseRenderer._process_multimodal
    if getattr(original, _SENTINEL, False):
        return None
    tokens, tokens_async = BaseRenderer._process_tokens, BaseRenderer._process_tokens_async

    def _process_multimodal(self, prompt, mm_data, *args, **kwargs):
        return process_multimodal(self, original, prompt, mm_data, *args, **kwargs)

    def _process_tokens(self, prompt, *args, **kwargs):
        try:
            return _deliver(tokens(self, prompt, *args, **kwargs), prompt)
        except VideoFitError as e:
            if isinstance(prompt, dict):
                e.data_id = id(prompt.get("multi_modal_data"))
            raise

    async def _process_tokens_async(self, prompt, *args, **kwargs):
        return _deliver(await tokens_async(self, prompt, *args, **kwargs), prompt)

    for fn, orig in ((_process_multimodal, original), (_process_tokens, tokens),
                     (_process_tokens_async, tokens_async)):
        setattr(fn, _SENTINEL, True)
        fn.__wrapped__ = orig
    BaseRenderer._process_multimodal = _process_multimodal
    BaseRenderer._process_tokens = _process_tokens
    BaseRenderer._process_tokens_async = _process_tokens_async
    _carry_context_into_render()
    return "BaseRenderer._process_multimodal (video fitting)"


def _short_text(render_params: Any, limit: int) -> bool:
    """A completion prompt of text only, at most ``limit`` characters: rendered on the event
    loop (``settings.INLINE_RENDER_CHARS``)."""
    prompt = render_params.get("prompts") if isinstance(render_params, dict) else None
    return (isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str)
            and len(prompt["prompt"]) <= limit and len(prompt) == 1)


def render_async_for(render: Any, executor: Any, limit: int) -> Any:
    """``render_async`` for a pooling IO processor: ``render`` in the request's context, on
    ``executor``, or at once on the event loop for a short text prompt (``_short_text``), its
    result or error delivered at the await as the pool's would be."""
    import asyncio
    import functools

    def render_async(*a, **kw):
        ctx = contextvars.copy_context()
        loop = asyncio.get_event_loop()
        if limit and a and not kw and _short_text(a[0], limit):
            done = loop.create_future()
            try:
                done.set_result(ctx.run(render, *a))
            except Exception as e:  # noqa: BLE001 - raised where the pool's would be: at the await
                done.set_exception(e)
            return done
        return loop.run_in_executor(executor, functools.partial(ctx.run, render, *a, **kw))

    return render_async


def _carry_context_into_render() -> None:
    """The pooling endpoints render each prompt on a thread pool (``make_async``), which drops
    context variables; render with the request's context instead, so its reports reach the
    response header. Same executor, same work; a short text renders on the event loop
    (``render_async_for``)."""
    from vllm.entrypoints.pooling.base.io_processor import PoolingIOProcessor

    from qwen3vl_vllm.serving.settings import inline_render_chars

    original = PoolingIOProcessor.__init__
    if getattr(original, _SENTINEL, False):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.render_async = render_async_for(self.render, self._executor, inline_render_chars())

    setattr(__init__, _SENTINEL, True)
    __init__.__wrapped__ = original
    PoolingIOProcessor.__init__ = __init__
