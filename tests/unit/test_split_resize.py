"""split_resize: a large image's resize on two threads gives Pillow's one-call bytes, and is only
taken where it pays. The expected pixels come from Pillow's ``Image.resize`` and from
qwen-vl-utils (the reference's preprocessing), never from the code under test."""

import logging
import threading

import numpy as np
import pytest
from PIL import Image

from qwen3vl_vllm.media import decode as M
from qwen3vl_vllm.media import split_resize as S
from qwen3vl_vllm.media import budget as B
from qwen3vl_vllm.media.budget import DecodeBudget, DecodePool

BICUBIC = Image.Resampling.BICUBIC


@pytest.fixture(autouse=True)
def _one_request_in_flight(monkeypatch):
    """As in a server serving one request (the tests below that count otherwise say so)."""
    monkeypatch.setattr(B, "_SERVING", [1])


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _screenshot(w=2600, h=1900, seed=0):
    """Flat panels, hard edges and text-like strokes, as a screen capture has."""
    rng = np.random.default_rng(seed)
    a = np.full((h, w, 3), 245, np.uint8)
    for _ in range(40):
        x0, y0 = rng.integers(0, w - 50), rng.integers(0, h - 20)
        a[y0:y0 + rng.integers(10, 300), x0:x0 + rng.integers(40, 900)] = rng.integers(0, 256, 3)
    rows = rng.integers(0, h, 300)
    a[rows, :: 3] = 20  # thin dark strokes
    return Image.fromarray(a)


def _sizes(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        W, H, w, h = (int(v) for v in rng.integers(2, 900, 4))
        if rng.random() < 0.3:  # shrink the height hard: Pillow 13's vertical-first case
            h = max(2, H // int(rng.integers(3, 9)))
        if w != W and h != H:
            out.append(((W, H), (w, h)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_split_gives_pillows_bytes_on_many_sizes(seed):
    cases = _sizes(25, seed)
    orders = {S.horizontal_first(W, H, w, h) for (W, H), (w, h) in cases}
    for (W, H), (w, h) in cases:
        image = _noise(W, H, seed)
        got, want = S.split_resize(image, (w, h)), image.resize((w, h), BICUBIC)
        assert got.size == want.size and got.tobytes() == want.tobytes(), ((W, H), (w, h))
    import PIL

    if int(PIL.__version__.split(".")[0]) >= 13:
        assert orders == {True, False}, "the cases should take both of Pillow 13's orders"


def test_the_order_of_passes_matters():
    """Run in the other order, the two passes give other pixels: the rule is what keeps parity."""
    image = _noise(64, 300, seed=3)
    want = image.resize((60, 40), BICUBIC).tobytes()
    first_x = image.resize((60, 300), BICUBIC).resize((60, 40), BICUBIC).tobytes()
    first_y = image.resize((64, 40), BICUBIC).resize((60, 40), BICUBIC).tobytes()
    assert first_x != first_y
    assert want == (first_x if S.horizontal_first(64, 300, 60, 40) else first_y)


def test_a_screenshot_through_the_public_path_equals_qwen_vl_utils(tmp_path, monkeypatch):
    from qwen_vl_utils.vision_process import fetch_image

    path = tmp_path / "shot.png"
    _screenshot().save(path)
    assert S.verified()  # its own check's splits are not what this test counts
    calls = []
    real = S.split_resize
    monkeypatch.setattr(S, "split_resize", lambda im, size: calls.append(size) or real(im, size))
    budget = DecodeBudget(limit=2**31, seconds=60, pool=DecodePool(2**31))
    got = M.fetch_image({"image": str(path), "min_pixels": 4096, "max_pixels": 1843200}, budget=budget)
    assert calls == [(1568, 1152)], "a lone 2600x1900 resize should be split"
    want = fetch_image({"image": str(path), "min_pixels": 4096, "max_pixels": 1843200}, image_patch_size=16)
    assert got.size == want.size == (1568, 1152)
    assert np.array_equal(np.asarray(got), np.asarray(want))


def _spy(monkeypatch):
    S.verified()  # its own check's splits are not what the tests count
    calls = []
    real = S.split_resize
    monkeypatch.setattr(S, "split_resize", lambda im, size: calls.append(size) or real(im, size))
    return calls


def test_taken_only_where_it_pays(monkeypatch):
    big = _noise(1300, 800)
    calls = _spy(monkeypatch)
    want = big.resize((640, 512), BICUBIC).tobytes()
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 1
    cases = {
        "small": (_noise(900, 900), (640, 512)),  # 0.81 MP < MIN_PIXELS
        "one side kept": (big, (1300, 512)),
        "not RGB": (big.convert("L"), (640, 512)),
    }
    for name, (image, size) in cases.items():
        assert S.resize(image, size).tobytes() == image.resize(size, BICUBIC).tobytes(), name
    assert len(calls) == 1, "only the large RGB image with both sides changing is split"
    monkeypatch.setenv(S.ENV, "0")
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 1
    monkeypatch.setenv(S.ENV, "1")
    monkeypatch.setattr(B, "_SERVING", [2])  # another request in flight: its forward has the cores
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 1
    monkeypatch.setattr(B, "_SERVING", [0])  # no server: the offline API, the batch runner
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 1
    monkeypatch.setattr(B, "_SERVING", [1])
    monkeypatch.setattr(S, "_ACTIVE", [1])  # another resize of this process is running
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 1
    assert S._ACTIVE == [1]
    monkeypatch.setattr(S, "_ACTIVE", [0])
    assert S.resize(big, (640, 512)).tobytes() == want and len(calls) == 2  # and alone again: split


def test_the_server_counts_its_requests_in_flight(monkeypatch):
    monkeypatch.setattr(B, "_SERVING", [0])
    limits = {"request_bytes": 0, "seconds": 0, "in_flight_bytes": 0}
    with B.serving(limits):
        assert B.requests_in_flight() == 1
        with B.serving(limits):
            assert B.requests_in_flight() == 2
        assert B.requests_in_flight() == 1
    assert B.requests_in_flight() == 0
    with pytest.raises(RuntimeError):
        with B.serving(limits):
            raise RuntimeError("a failed request")
    assert B.requests_in_flight() == 0


def test_two_at_once_split_at_most_one(monkeypatch):
    """With a split running, a second resize takes the one call (the cores are taken)."""
    big = _noise(1300, 800)
    gate, entered, calls = threading.Event(), threading.Event(), []
    real = S.split_resize

    def slow_split(im, size):
        calls.append(size)
        entered.set()
        gate.wait(10)
        return real(im, size)

    monkeypatch.setattr(S, "split_resize", slow_split)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("a", S.resize(big, (640, 512))))
    t.start()
    assert entered.wait(10)
    out["b"] = S.resize(big, (640, 512))  # while the first is inside its split
    gate.set()
    t.join(10)
    want = big.resize((640, 512), BICUBIC).tobytes()
    assert calls == [(640, 512)] and out["a"].tobytes() == out["b"].tobytes() == want
    assert S._ACTIVE == [0]


def test_the_pool_pays_for_the_copies_or_the_split_is_skipped(monkeypatch):
    big = _noise(1300, 800)
    extra = S.extra_bytes("RGB", 1300, 800, 640, 512)
    assert extra == 4 * (1300 * 800 + 2 * 640 * 800 + 640 * 512)  # input strips, intermediate twice, output strips
    seen = []
    real = S.split_resize

    def watching(im, size):
        seen.append(pool.held)
        return real(im, size)

    pool = DecodePool(extra + 10)
    monkeypatch.setattr(S, "split_resize", watching)
    budget = DecodeBudget(limit=2**31, seconds=60, pool=pool)
    S.resize(big, (640, 512), budget=budget)
    assert seen == [extra] and pool.held == 0 and budget.held == 0
    tight = DecodePool(extra + 10)
    tight.acquire(20, 0.0)  # someone else holds 20 bytes: the copies do not fit
    budget = DecodeBudget(limit=2**31, seconds=60, pool=tight)
    out = S.resize(big, (640, 512), budget=budget)  # no wait, no 503: the one call
    assert out.tobytes() == big.resize((640, 512), BICUBIC).tobytes()
    assert seen == [extra] and tight.held == 20 and budget.held == 0


def test_a_failure_inside_a_strip_is_raised_and_everything_returned(monkeypatch):
    big = _noise(1300, 800)
    pool = DecodePool(2**31)
    budget = DecodeBudget(limit=2**31, seconds=60, pool=pool)
    assert S.verified()  # checked before strips start failing
    real_crop = Image.Image.crop

    def crop(self, box=None):
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("no room for a strip")
        return real_crop(self, box)

    monkeypatch.setattr(Image.Image, "crop", crop)
    with pytest.raises(MemoryError, match="no room for a strip"):
        S.resize(big, (640, 512), budget=budget)
    assert S._ACTIVE == [0] and pool.held == 0 and budget.held == 0


def test_a_pillow_whose_order_differs_turns_it_off_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(S, "_VERIFIED", [])
    monkeypatch.setattr(S, "horizontal_first", lambda *a: True)  # the pre-13 rule on any Pillow
    import PIL

    calls = _spy(monkeypatch)
    big = _noise(1000, 1500)  # 1500 -> 300 high: Pillow 13 runs this one vertical first
    with caplog.at_level(logging.WARNING, logger="qwen3vl_vllm.media"):
        out = S.resize(big, (900, 300))
    assert out.tobytes() == big.resize((900, 300), BICUBIC).tobytes()
    if int(PIL.__version__.split(".")[0]) >= 13:
        assert S._VERIFIED == [False] and (900, 300) not in calls
        assert "differs from Pillow" in caplog.text and "resized in one call" in caplog.text
    else:
        assert S._VERIFIED == [True]  # that is the rule before 13


def test_the_switch_is_refused_by_name():
    assert S.enabled({}) is True and S.enabled({S.ENV: "0"}) is False
    for bad in ("yes", "2", "off"):
        with pytest.raises(ValueError, match=rf"{S.ENV}='{bad}': use 1 .* or 0"):
            S.enabled({S.ENV: bad})


def test_a_bad_switch_stops_a_detected_checkpoint_before_its_engine(tmp_path, monkeypatch):
    from vllm.engine.arg_utils import EngineArgs

    from qwen3vl_vllm.serving import plugin
    from qwen3vl_vllm.testing.checkpoint import ensure_checkpoint

    ckpt = ensure_checkpoint(tmp_path, kind="embedding", size="tiny")
    plugin.register()
    monkeypatch.setenv(S.ENV, "fast")
    with pytest.raises(ValueError, match=rf"{S.ENV}='fast': use 1 .* or 0"):
        EngineArgs(model=str(ckpt), dtype="float32").create_model_config()
    monkeypatch.setattr(S, "_VERIFIED", [])
    monkeypatch.setenv(S.ENV, "0")
    assert EngineArgs(model=str(ckpt), dtype="float32").create_model_config().runner_type == "pooling"
    assert S._VERIFIED == []  # off: no self-check
    monkeypatch.setenv(S.ENV, "1")
    EngineArgs(model=str(ckpt), dtype="float32").create_model_config()
    assert S._VERIFIED == [True]  # on: checked at start-up, before any request
