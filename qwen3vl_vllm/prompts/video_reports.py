"""The channel that carries video-fit reports from vLLM's renderer to whoever asked.

The serving hook (``qwen3vl_vllm.serving.video_fit_hook``) writes a report for each prompt with
prepared videos (frames used of prepared, prompt tokens); the request's middleware (the
``X-Qwen3VL-Video-Frames`` header) or the offline call (``collecting``) reads it. It lives in
the pure layer so that the offline API and the server share it without importing each other.

Example::

    >>> from qwen3vl_vllm.prompts.video_reports import KEY, collecting, deliver
    >>> with collecting() as reports:
    ...     _ = deliver({KEY: {"frames": [(52, 60)], "prompt_tokens": 8052}}, {"prompt": "p"})
    >>> reports[0]["frames"]
    [(52, 60)]
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

from qwen3vl_vllm.prompts.video_fit import mode

KEY = "_qwen3vl_video_frames"  # carries the report from the renderer thread to the request


REPORTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("qwen3vl_video_reports",
                                                                      default=None)
MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("qwen3vl_video_fit_mode",
                                                                  default=None)
# The offline engine prepares prompts on vLLM's renderer thread pool, which does not carry
# context variables: an offline call also registers its collector here (one LLM call at a time).
OFFLINE: list[dict] = []


@contextlib.contextmanager
def collecting(fit_mode: str | None = None):
    """Collect the reports of the prompts prepared in this context (the offline API): one
    ``{"data_id": id(multi_modal_data), "frames": [(used, prepared), ...], "prompt_tokens": n}`` per prompt with
    media. ``fit_mode`` overrides ``QWEN3VL_VIDEO_FIT`` for these prompts."""
    collector = {"reports": [], "mode": fit_mode}
    token = REPORTS.set(collector["reports"])
    OFFLINE.append(collector)
    try:
        yield collector["reports"]
    finally:
        OFFLINE.remove(collector)
        REPORTS.reset(token)


def current_mode() -> str:
    """The request's ``X-Qwen3VL-Video-Fit``, else the offline call's, else the server's."""
    chosen = MODE.get()
    if chosen is None and OFFLINE:
        chosen = OFFLINE[-1]["mode"]
    return mode(chosen)


def deliver(engine_input: Any, prompt: Any) -> Any:
    report = engine_input.pop(KEY, None) if isinstance(engine_input, dict) else None
    reports = REPORTS.get()
    if reports is None and OFFLINE:
        reports = OFFLINE[-1]["reports"]
    if report is not None and reports is not None:
        data = prompt.get("multi_modal_data") if isinstance(prompt, dict) else None
        reports.append({"data_id": id(data) if data is not None else None, **report})
    return engine_input


