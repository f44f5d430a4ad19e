"""Videos of any length: fewer frames, evenly spread, until the prompt fits ``max_model_len``.

Why: the reference gives a video file up to 64 frames at their full per-frame size and no total
budget, so one minute of 640x480 is already a 9,288-token prompt, above the embedding's 8,192;
the reference then cuts the prompt at the right, generation prompt included (SPEC §1: no parity
is owed there). The project's rule instead:

- A prompt that fits is untouched: the video is exactly the reference's.
- Otherwise every video keeps at most ``K`` of its prepared frames, ``K`` the largest even count
  (at least 2) with which the whole prompt fits. The kept frames are spread evenly over the ones
  the reference sampled (``keep_indices``: first and last included), at the reference's per-frame
  size; their timestamps stay the true ones. Shorter videos of the same prompt keep theirs.
- ``QWEN3VL_VIDEO_FIT=refuse`` (YAML ``server.video_fit``, offline ``video_fit=``, one request:
  header ``X-Qwen3VL-Video-Fit: refuse``) refuses such a prompt instead, with a 400 that names the video, the frame count that would fit and how to send
  it. A prompt that cannot fit even with 2 frames per video is refused in both modes.

What was used is reported: the server adds ``X-Qwen3VL-Video-Frames: used/prepared, ...`` (one
entry per video, in the order the prompts were prepared) to the response, the offline API returns
it with ``return_metadata=True``, and the client warns (``VideoFitWarning``) naming the input.

This module is the rule, pure; ``video_fit_hook`` applies it where every path meets in vLLM (the
renderer, after the media were prepared and before vLLM checks the length).

Example::

    >>> keep_indices(10, 4)
    [0, 3, 6, 9]
    >>> fit_cap(base=100, limit=400, videos=[(8, lambda k: 50 * k)])
    6
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from qwen3vl_vllm.prompts.engine import image_tokens

FIT_ENV = "QWEN3VL_VIDEO_FIT"
MODES = ("fit", "refuse")
DEFAULT_MODE = "fit"
HEADER = "x-qwen3vl-video-frames"  # response: frames used/prepared per video
MODE_HEADER = "x-qwen3vl-video-fit"  # request: fit or refuse, for this request only
TEMPORAL = 2  # frames per temporal patch: counts stay even


class VideoFitError(ValueError):
    """A prompt whose videos cannot (or, with ``refuse``, may not) be fitted to ``max_model_len``."""

    def __init__(self, message: str, *, video: int | None = None, fits: int | None = None):
        super().__init__(message)
        self.video = video
        self.fits = fits
        self.data_id: int | None = None  # id() of the prompt's media, when known (offline naming)


class VideoFitWarning(UserWarning):
    """A video was given fewer frames than the reference samples, so that its prompt fits."""


def mode(value: str | None = None) -> str:
    """The fitting mode: the argument, else ``QWEN3VL_VIDEO_FIT``, else ``fit``."""
    chosen = value if value is not None else (os.environ.get(FIT_ENV) or DEFAULT_MODE)
    chosen = str(chosen).strip().lower()
    if chosen not in MODES:
        raise ValueError(f"video_fit={chosen!r} is not one of {MODES} (set {FIT_ENV} or "
                         "server.video_fit to fit or refuse)")
    return chosen


def keep_indices(n: int, k: int) -> list[int]:
    """``k`` of ``n`` positions, evenly spread, first and last kept (``round(linspace)``)."""
    if k >= n:
        return list(range(n))
    if k <= 1:
        return [0]
    step = (n - 1) / (k - 1)  # as numpy.linspace computes it, so .5 cases round the same way
    return [int(round(i * step)) for i in range(k - 1)] + [n - 1]


def fit_cap(*, base: int, limit: int, videos: Sequence[tuple[int, Callable[[int], int]]]) -> int | None:
    """The largest even per-video frame cap with which the prompt fits, or None.

    ``base`` is the prompt's length without its videos; each video is ``(frames, tokens(k))``,
    the tokens it expands to with ``k`` frames. A video with no more frames than the cap keeps
    them all.
    """
    if not videos:
        return None
    top = max(n for n, _ in videos)
    cap = top - top % TEMPORAL
    while cap >= TEMPORAL:
        if base + sum(cost(min(n, cap)) for n, cost in videos) <= limit:
            return cap
        cap -= TEMPORAL
    return None


def group_timestamps(indices: Sequence[int], fps: float) -> list[float]:
    """Seconds of each temporal group as Qwen3-VL prints them (mean of the group's frames)."""
    idx = list(indices)
    if len(idx) % TEMPORAL:
        idx += [idx[-1]] * (TEMPORAL - len(idx) % TEMPORAL)
    t = [i / fps for i in idx]
    return [(t[i] + t[i + TEMPORAL - 1]) / 2 for i in range(0, len(t), TEMPORAL)]


class PreparedVideo:
    """One prepared video of a prompt: frames (T, H, W, C) and vLLM metadata."""

    def __init__(self, item: Any):
        frames, meta = item
        shape = tuple(getattr(frames, "shape", ()))
        if len(shape) != 4 or not isinstance(meta, dict) or "frames_indices" not in meta:
            raise TypeError("not a prepared (frames, metadata) video")
        self.frames, self.meta = frames, meta
        self.n, self.h, self.w = int(shape[0]), int(shape[1]), int(shape[2])
        self.indices = [int(i) for i in meta["frames_indices"]]
        self.fps = float(meta["fps"])
        if len(self.indices) != self.n:
            raise TypeError("metadata does not match the frames")

    def tokens(self, k: int, ts_len: Callable[[float], int]) -> int:
        """Tokens this video adds to the prompt with ``k`` frames (its pad replaced)."""
        keep = keep_indices(self.n, k)
        per_group = image_tokens(self.w, self.h) + 2  # a frame pair's pads + vision start/end
        groups = group_timestamps([self.indices[i] for i in keep], self.fps)
        return sum(ts_len(t) + per_group for t in groups) - 1

    def subset(self, k: int) -> tuple[Any, dict]:
        keep = keep_indices(self.n, k)
        return self.frames[keep], {**self.meta, "frames_indices": [self.indices[i] for i in keep]}


def header_value(reports: Sequence[dict]) -> str:
    """``used/prepared`` for every video of the reports, comma separated."""
    return ", ".join(f"{u}/{n}" for r in reports for u, n in r.get("frames", ()))


def parse_header(value: str | None) -> list[tuple[int, int]]:
    """The client's reading of ``X-Qwen3VL-Video-Frames``."""
    out = []
    for part in (value or "").split(","):
        used, _, prepared = part.strip().partition("/")
        if used.isdigit() and prepared.isdigit():
            out.append((int(used), int(prepared)))
    return out


def _refuse_message(counts: Sequence[int], total: int, limit: int, cap: int | None, base: int) -> str:
    """Names the video(s) to shorten, the frame count that fits and how to send it."""
    over = [i for i, n in enumerate(counts) if cap is None or n > cap]
    if len(counts) == 1:
        what = f"the video's {counts[0]} frames make"
    else:
        what = ", ".join(f"video {i + 1} of {len(counts)} ({counts[i]} frames)" for i in over) + " make"
    if cap is None:
        return (f"the prompt is {total} tokens with its video(s), above max_model_len={limit}, and "
                f"does not fit even with 2 frames per video: its text and images alone take {base} "
                "tokens. Shorten the text, or send fewer images or videos")
    each = "" if len(over) == 1 else " per video"
    return (f"{what} the prompt {total} tokens, above max_model_len={limit}; {cap} frames{each} "
            f"would fit. Send at most {cap} frames{each}: max_frames={cap} (or a lower fps) on the "
            f"item, e.g. data:video/mp4;max_frames={cap};base64,... (or a frame list of {cap} "
            f"frames); or have it fitted (video_fit=fit: {FIT_ENV}, YAML server.video_fit, header "
            f"{MODE_HEADER}, offline video_fit=)")


def fit_prompt(prompt_len: int, videos: list[PreparedVideo], *, limit: int, extra: int,
               ts_len: Callable[[float], int], fit_mode: str) -> int | None:
    """The per-video frame cap for a prompt (None: untouched); raises ``VideoFitError``.

    ``extra`` is what the prompt's other media add (images), ``prompt_len`` the unexpanded ids.
    """
    full = [(v.n, (lambda v: lambda k: v.tokens(k, ts_len))(v)) for v in videos]
    total = prompt_len + extra + sum(cost(n) for n, cost in full)
    if total <= limit:
        return None
    cap = fit_cap(base=prompt_len + extra, limit=limit, videos=full)
    if cap is None or fit_mode == "refuse":
        longest = max(range(len(videos)), key=lambda i: videos[i].n)
        raise VideoFitError(_refuse_message([v.n for v in videos], total, limit, cap, prompt_len + extra),
                            video=longest, fits=cap)
    return cap
