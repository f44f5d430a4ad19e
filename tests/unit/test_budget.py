"""Decode budgets: what a request may decode, and what the process may hold (no server)."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from qwen3vl_vllm.media import budget as B
from qwen3vl_vllm.media import decode as M
from qwen3vl_vllm.errors import MediaError


def _png(w, h, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_request_limit_counts_decoded_bytes_and_names_the_item():
    b = B.DecodeBudget(limit=1000, seconds=0)
    b.charge(600, "a")
    b.hold(10_000, "copy")  # copies do not count as decoded
    with pytest.raises(B.DecodeLimitError) as err:
        b.charge(600, "inputs[1].image[0]")
    assert str(err.value).startswith("inputs[1].image[0]: decoding it would bring this request to "
                                     "1200 bytes decoded, above the limit of 1000 bytes")
    assert "QWEN3VL_MAX_REQUEST_DECODED_BYTES" in str(err.value)
    b.charge(600, "again", count=False)  # a payload already paid for: not counted twice
    assert b.used == 600


def test_vllm_request_budget_caps_ours():
    assert B.request_limit({}) == B.DEFAULT_REQUEST_BYTES
    assert B.request_limit({B.VLLM_REQUEST_BYTES_ENV: "1000"}) == 1000
    assert B.request_limit({B.REQUEST_BYTES_ENV: "500", B.VLLM_REQUEST_BYTES_ENV: "1000"}) == 500
    assert B.request_limit({B.REQUEST_BYTES_ENV: "0"}) == 0  # none of ours: no limit
    with pytest.raises(ValueError, match="must be >= 0"):
        B.request_limit({B.REQUEST_BYTES_ENV: "-1"})


def test_vllm_default_budget_applies_when_its_variable_is_unset(monkeypatch):
    """vLLM 0.33 caps a request at 715,827,880 decoded bytes by default; the plugin's connector
    replaces vLLM's, so that default must still hold (0.32 has no such setting)."""
    import sys
    import types

    import vllm

    def use(envs):
        monkeypatch.setitem(sys.modules, "vllm.envs", envs)
        monkeypatch.setattr(vllm, "envs", envs)

    monkeypatch.delenv(B.VLLM_REQUEST_BYTES_ENV, raising=False)
    monkeypatch.delenv(B.REQUEST_BYTES_ENV, raising=False)
    newer = types.ModuleType("vllm.envs")
    newer.VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES = 715_827_880
    use(newer)
    assert B.request_limit() == 715_827_880
    with pytest.raises(B.DecodeLimitError, match=r"above the limit of 682\.7 MiB "
                                                 r"\(VLLM_MAX_MEDIA_REQUEST_DECODE_BYTES\)"):
        B.DecodeBudget(seconds=0).charge(800 * 2**20, "inputs[0].image")
    use(types.ModuleType("vllm.envs"))  # 0.32: no such setting
    assert B.request_limit() == B.DEFAULT_REQUEST_BYTES
    monkeypatch.setenv(B.VLLM_REQUEST_BYTES_ENV, "1000")  # set by hand: honoured on any vLLM
    assert B.request_limit() == 1000


def test_installed_vllm_budget_is_never_loosened(monkeypatch):
    import vllm.envs

    monkeypatch.delenv(B.VLLM_REQUEST_BYTES_ENV, raising=False)
    monkeypatch.delenv(B.REQUEST_BYTES_ENV, raising=False)
    theirs = getattr(vllm.envs, B.VLLM_REQUEST_BYTES_ENV, None)
    if theirs is None:
        assert B.request_limit() == B.DEFAULT_REQUEST_BYTES
    else:
        assert 0 < B.request_limit() <= theirs


def test_time_limit_is_checked():
    b = B.DecodeBudget(limit=0, seconds=0.05)
    b.check_time("x")  # starts the clock
    time.sleep(0.08)
    with pytest.raises(B.DecodeLimitError, match="took longer than 0.05 s"):
        b.check_time("inputs[0].video[0]")


def test_pool_admits_up_to_its_limit_then_waits_then_refuses():
    pool = B.DecodePool(100)
    a = B.DecodeBudget(limit=0, seconds=0.3, pool=pool)
    a.charge(80, "a")
    b = B.DecodeBudget(limit=0, seconds=0.2, pool=pool)
    with pytest.raises(B.ServerBusyError) as err:
        b.charge(40, "b")  # waits for its decode time, then gives up
    assert B.BUSY_MARKER in str(err.value) and b.busy
    released = threading.Timer(0.05, a.close)
    released.start()
    c = B.DecodeBudget(limit=0, seconds=2, pool=pool)
    c.charge(40, "c")  # admitted once `a` is done
    released.join()
    assert pool.held == 40
    c.credit(30)
    assert pool.held == 10
    c.close()
    assert pool.held == 0
    big = B.DecodeBudget(limit=0, seconds=1, pool=pool)
    big.charge(500, "alone")  # bigger than the pool: admitted when nothing else is held
    big.close()


def test_image_is_charged_from_its_header_before_decoding(monkeypatch):
    """A 5000x5000 image over a 10 MB budget is refused before a pixel is decoded."""
    from PIL import ImageFile

    data = _png(5000, 5000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(B.DecodeLimitError, match="inputs\\[0\\].image\\[0\\]: decoding it would"):
        M.load_image(data, "inputs[0].image[0]", budget=B.DecodeBudget(limit=10_000_000, seconds=0))


def test_frame_lists_are_refused_mid_list_and_hold_one_frame_at_a_time():
    import torch

    frames = [Image.new("RGB", (512, 512), (i, 0, 0)) for i in range(6)]
    pool = B.DecodePool(10**12)
    b = B.DecodeBudget(limit=3 * 512 * 512 * 4 + 10, seconds=0, pool=pool)
    with pytest.raises(B.DecodeLimitError) as err:
        M.frame_list_clip([M.png_data_url(f) for f in frames], "inputs[0].video[0]",
                          total_pixels=7864320, budget=b)
    assert str(err.value).startswith("inputs[0].video[0].frames[3]: decoding it would")
    # within budget: what is held at the end is the final clip only (every frame was credited)
    b = B.DecodeBudget(limit=0, seconds=0, pool=pool)
    clip, _ = M.frame_list_clip([M.png_data_url(f) for f in frames], "v", total_pixels=7864320,
                                budget=b)
    assert clip.dtype == torch.uint8  # the reference's rounded values, a byte each
    assert b.held == clip.numel()


def test_connector_refuses_a_frame_list_from_headers_alone(monkeypatch):
    """The server's frame lists are paid for from every kept frame's header at once: a list
    over budget is refused before any frame is decoded."""
    from PIL import ImageFile

    from qwen3vl_vllm.serving import media_connector as mc

    payload = ",".join([base64.b64encode(_png(2100, 2100)).decode()] * 64)  # 1.05 GiB decoded
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    token = B._CURRENT.set(B.DecodeBudget(limit=B.DEFAULT_REQUEST_BYTES, seconds=0))
    try:
        io_ = mc.ReferenceVideoIO(fps=1.0, max_frames=64, frame_list_max_frames=64, total_pixels=7864320)
        with pytest.raises(B.DecodeLimitError) as err:
            io_.load_base64("video/png", payload)
    finally:
        B._CURRENT.reset(token)
    assert str(err.value).startswith("item#")  # tagged for the error middleware
    assert ".frames: decoding it would bring this request to 1.05 GiB decoded, above the limit " \
           "of 1.00 GiB" in str(err.value), str(err.value)


def test_plane_by_plane_resize_equals_the_whole_clip():
    """``_bicubic_hwc`` resizes one colour plane at a time (one plane held as float): the same
    numbers as the clip resize the reference's torchvision call gives."""
    import torch

    rng = np.random.default_rng(3)
    for case in range(25):
        h, w = int(rng.integers(8, 300)), int(rng.integers(8, 300))
        oh, ow = int(rng.integers(1, 10)) * 32, int(rng.integers(1, 10)) * 32
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        whole = M._bicubic(torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), oh, ow)[0]
        got = M._bicubic_hwc(arr, oh, ow)
        assert got.dtype == torch.uint8 and torch.equal(got.float(), whole), case


@pytest.mark.parametrize("w,h,n", [(96, 64, 12), (160, 120, 30)])
def test_video_frames_resized_as_decoded_equal_the_clip_resize(tmp_path, w, h, n):
    """read_video_file resizes each kept frame as soon as it is decoded: the same clip as
    decoding all of them and resizing the stack (the former path)."""
    from cases import write_mp4

    path = write_mp4(tmp_path / "v.mp4", n=n, w=w, h=h, fps=4)
    raw, meta, _ = M.read_video_file(str(path), "v", fps=2.0, max_frames=64)
    for total in (M.DEFAULT_TOTAL_PIXELS, 96 * 64 * 2):  # unchanged size, and a real resize
        oh, ow = M.clip_size(raw.shape[0], raw.shape[2], raw.shape[3], total_pixels=total)
        streamed, meta2, _ = M.read_video_file(str(path), "v", fps=2.0, max_frames=64, total_pixels=total)
        assert meta2["frames_indices"] == meta["frames_indices"]
        assert streamed.float().equal(M._bicubic(raw, oh, ow)), total


def test_video_resolution_change_and_decode_time_are_refused(tmp_path):
    from cases import resolution_change_ts, write_mp4

    ts = resolution_change_ts(tmp_path / "rc.ts")
    with pytest.raises(MediaError, match=r"v: the video's resolution changes mid-stream \(64x48 -> 256x192"):
        M.read_video_file(str(ts), "v", fps=1.0, max_frames=64, total_pixels=M.DEFAULT_TOTAL_PIXELS)
    mp4 = write_mp4(tmp_path / "slow.mp4", n=40, w=96, h=64, fps=4)
    slow = B.DecodeBudget(limit=0, seconds=1e-9)
    slow.check_time("start")  # the clock runs out at once
    with pytest.raises(B.DecodeLimitError, match="took longer than"):
        M.read_video_file(str(mp4), "v", fps=1.0, max_frames=64, budget=slow,
                          total_pixels=M.DEFAULT_TOTAL_PIXELS)


def test_serving_sets_and_releases_the_request_budget():
    assert B.current() is None
    with B.serving({"request_bytes": 100, "seconds": 0, "in_flight_bytes": 0}) as b:
        assert B.current() is b and b.limit == 100
        assert B.for_request() is b
    assert B.current() is None
    assert B.for_request() is not b  # outside a request: a fresh budget each time
