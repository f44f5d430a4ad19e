"""PIL's bicubic resize of a large image on two threads, with the one call's exact pixels.

Why: the reference resizes every image with ``Image.resize(size, BICUBIC)``, which runs on one
core. For a 2600x1900 screenshot going to 1568x1152 that is ~48 ms on this machine, and at
c = 1 it is time the model waits for (the API server's work and the forward run one after the
other): the plugin's API server spent 115 ms per screenshot against plain vLLM's 81, whose HF
processor resizes with torchvision and gives other pixels (``docs/serving-cost.md``). Split over
two threads the same resize took 30.5-32.5 ms (medians of 9, three runs, 2026-12-07).

Why the pixels are the same: Pillow resizes in two separable passes (``ImagingResampleInner``
in ``Resample.c``). In the horizontal pass each output row depends only on the same input row;
in the vertical pass each output column only on the same column; each pass's coefficients
depend only on that axis's input and output lengths; the intermediate is an image of the same
mode, rounded as Pillow rounds it. So resizing strips of rows along x, then strips of columns
along y (a one-axis ``Image.resize`` each, which Pillow runs as that one pass), gives the same
bytes, provided the passes run in Pillow's order. Pillow 13 runs the vertical pass first when
the height shrinks by more than twice what the width does (``horizontal_first``; earlier
Pillows always run the horizontal one first); the other order gave other pixels for 10 of 30
random sizes. A Pillow whose order differs is caught by a self-check (``verified``: at start-up
in a server, else at first use), which turns this off for the process and logs why.

When: only for an RGB image of at least ``MIN_PIXELS`` whose both sides change, in a server
whose only request in flight is this one (``budget.requests_in_flight``), with no other resize
of the process running, and when the process's decode pool has room for the strips and the
intermediate (``DecodeBudget.try_hold``; never a 503 for this). Otherwise it is the one call:
with other requests in flight the cores are busy with them (their forward, their rendering),
and the split only adds its copies and hand-offs. Measured with only "no other resize running"
as the rule (``benchmarks/text_paths.py --kind screenshot``, 12 rounds of 4, 2026-12-07): c = 8
lost 1.5 % of its rate at +16 ms of API server CPU per screenshot, because resizes seldom
overlap while the worker keeps both cores busy. Offline and in the batch runner (no request in
flight) it is never taken: a batch keeps the cores busy too. ``QWEN3VL_SPLIT_RESIZE=0`` turns
it off; a bad value is refused by name at start-up.

Example::

    >>> from PIL import Image
    >>> from qwen3vl_vllm.media.split_resize import split_resize
    >>> im = Image.radial_gradient("L").convert("RGB").resize((300, 200))
    >>> split_resize(im, (120, 90)).tobytes() == im.resize((120, 90), Image.Resampling.BICUBIC).tobytes()
    True
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

from qwen3vl_vllm.media.budget import image_bytes, requests_in_flight

logger = logging.getLogger("qwen3vl_vllm.media")
ENV = "QWEN3VL_SPLIT_RESIZE"
MIN_PIXELS = 1_000_000  # below this the copies and the hand-off cost more than a thread saves
STRIPS = 2

_ACTIVE = [0]  # resizes of this process running now (split or not)
_LOCK = threading.Lock()
_VERIFIED: list[bool] = []  # the self-check's answer, once
_POOL: list[Any] = []  # [the pid that made it, the executor]


def enabled(environ=None) -> bool:
    """``ENV``: 1 (default) splits a lone large resize over two threads; 0 always one call."""
    raw = (environ if environ is not None else os.environ).get(ENV, "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"{ENV}={raw!r}: use 1 (split a large image's resize over two threads) "
                         "or 0 (Pillow's one call)")
    return raw == "1"


@functools.cache
def _pillow_major() -> int:
    import PIL

    try:
        return int(PIL.__version__.split(".")[0])
    except ValueError:
        return 0


def horizontal_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Pillow's order of passes (``ImagingResampleInner``): from Pillow 13, vertical first iff
    the height shrinks, and by more than twice what the width shrinks; before 13 (10.4, 11.x,
    12.x read), always horizontal first."""
    if _pillow_major() < 13:
        return True
    dy, dx = height - new_height, width - new_width
    return not (dy > 0 and dy > 2 * dx)


def _bounds(n: int, parts: int) -> list[int]:
    return [n * i // parts for i in range(parts + 1)]


def _map(fn, items: list) -> list:
    """``fn`` over ``items``: the first on this thread, the rest on the pool (Pillow lets the
    GIL go while it resamples)."""
    pid = os.getpid()
    if not _POOL or _POOL[0] != pid:  # none yet, or made before a fork (its thread is not here)
        with _LOCK:
            if not _POOL or _POOL[0] != pid:
                from concurrent.futures import ThreadPoolExecutor

                _POOL[:] = [pid, ThreadPoolExecutor(STRIPS - 1, thread_name_prefix="qwen3vl-resize")]
    futures = [_POOL[1].submit(fn, item) for item in items[1:]]
    try:
        first = fn(items[0])
    finally:
        rest = [f.result() for f in futures]  # waited for even if the first failed
    return [first, *rest]


def _along_x(image, new_width: int):
    """The horizontal pass alone, in strips of rows."""
    from PIL import Image

    ys = _bounds(image.height, STRIPS)

    def strip(i):
        rows = image.crop((0, ys[i], image.width, ys[i + 1]))
        return rows.resize((new_width, rows.height), Image.Resampling.BICUBIC)

    out = Image.new(image.mode, (new_width, image.height))
    for y, part in zip(ys, _map(strip, list(range(STRIPS)))):
        out.paste(part, (0, y))
    return out


def _along_y(image, new_height: int):
    """The vertical pass alone, in strips of columns."""
    from PIL import Image

    xs = _bounds(image.width, STRIPS)

    def strip(i):
        cols = image.crop((xs[i], 0, xs[i + 1], image.height))
        return cols.resize((cols.width, new_height), Image.Resampling.BICUBIC)

    out = Image.new(image.mode, (image.width, new_height))
    for x, part in zip(xs, _map(strip, list(range(STRIPS)))):
        out.paste(part, (x, 0))
    return out


def split_resize(image, size: tuple[int, int]):
    """``image.resize(size, BICUBIC)`` as two one-axis passes in Pillow's order, each split
    into strips on two threads. Both sides must change and be at least ``STRIPS`` pixels."""
    w, h = size
    if horizontal_first(image.width, image.height, w, h):
        return _along_y(_along_x(image, w), h)
    return _along_x(_along_y(image, h), w)


# sizes that take each order, odd and even strips, up and down on either axis
_CHECK_SIZES = (((257, 131), (97, 61)), ((64, 300), (60, 40)), ((50, 41), (123, 77)),
                ((300, 200), (120, 199)), ((33, 400), (500, 35)), ((128, 96), (64, 48)))


def verified() -> bool:
    """Whether ``split_resize`` gives this Pillow's one-call bytes, checked once per process on
    random images of ``_CHECK_SIZES`` (a few ms). False turns the split off, logged."""
    if _VERIFIED:
        return _VERIFIED[0]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(2026)
    bad = []
    for (W, H), (w, h) in _CHECK_SIZES:
        image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        if split_resize(image, (w, h)).tobytes() != image.resize((w, h), Image.Resampling.BICUBIC).tobytes():
            bad.append(f"{W}x{H}->{w}x{h}")
    import PIL

    if bad:
        logger.warning("qwen3vl-vllm: the split resize differs from Pillow %s's own on %s; large "
                       "images are resized in one call", PIL.__version__, ", ".join(bad))
    else:
        logger.info("qwen3vl-vllm: a lone request's large image is resized on two threads "
                    "(checked against Pillow %s's one call; %s=0 to turn off)", PIL.__version__, ENV)
    _VERIFIED.append(not bad)
    return _VERIFIED[0]


def extra_bytes(mode: str, width: int, height: int, new_width: int, new_height: int) -> int:
    """What the split holds beyond the one call, at most: the strips of the input, the
    intermediate twice (its strips and the pasted image) and the output's strips."""
    if horizontal_first(width, height, new_width, new_height):
        inter = image_bytes(mode, new_width, height)
    else:
        inter = image_bytes(mode, width, new_height)
    return image_bytes(mode, width, height) + 2 * inter + image_bytes(mode, new_width, new_height)


def resize(image, size: tuple[int, int], *, budget=None):
    """``image.resize(size, BICUBIC)``'s pixels; split over two threads when it pays (see the
    module's docstring), else that one call."""
    from PIL import Image

    w, h = size
    with _LOCK:
        alone = _ACTIVE[0] == 0 and requests_in_flight() == 1
        _ACTIVE[0] += 1
    held = 0
    try:
        if (alone and image.mode == "RGB" and image.width * image.height >= MIN_PIXELS
                and w != image.width and h != image.height and min(w, h) >= STRIPS
                and enabled() and verified()):
            extra = extra_bytes(image.mode, image.width, image.height, w, h)
            if budget is None or budget.try_hold(extra):
                held = extra if budget is not None else 0
                return split_resize(image, (w, h))
        return image.resize((w, h), Image.Resampling.BICUBIC)
    finally:
        if held:
            budget.credit(held)
        with _LOCK:
            _ACTIVE[0] -= 1
