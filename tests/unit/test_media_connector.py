"""The server's media connector against qwen-vl-utils itself (no server: its IO objects directly)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from qwen3vl_vllm.serving import media_connector as mc
from qwen3vl_vllm.errors import MediaError


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _noise(w, h, seed, mode="RGB"):
    arr = np.random.RandomState(seed).randint(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(arr, "RGBA").convert(mode)


IMAGE_IO = mc.ReferenceImageIO(min_pixels=4096, max_pixels=1843200)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK"])
@pytest.mark.parametrize("size", [(20, 20), (150, 100), (1200, 40)])
def test_images_match_qwen_vl_utils(mode, size):
    from qwen_vl_utils.vision_process import fetch_image

    img = _noise(*size, seed=size[0] + len(mode), mode=mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"transparency": 3} if mode == "P" else {}))
    data = buf.getvalue()
    got = IMAGE_IO.load_bytes(data).media
    want = fetch_image({"image": Image.open(io.BytesIO(data)), "min_pixels": 4096,
                        "max_pixels": 1843200}, image_patch_size=16)
    assert got.size == want.size and got.mode == "RGB"
    assert got.tobytes() == want.tobytes()


def test_pre_resized_image_stays_bit_identical():
    img = _noise(160, 96, 5)  # already a multiple of 32 within the bounds
    got = IMAGE_IO.load_base64("image/png", base64.b64encode(_png(img)).decode()).media
    assert got.size == img.size and got.tobytes() == img.tobytes()


@pytest.mark.parametrize("n", [1, 2, 3, 10, 64, 100])
def test_frame_lists_match_qwen_vl_utils(n):
    import torch
    from qwen_vl_utils.vision_process import fetch_video

    frames = [_noise(64, 48, 100 + i, mode="RGB") for i in range(n)]
    io_ = mc.ReferenceVideoIO(fps=1.0, max_frames=64, frame_list_max_frames=64, total_pixels=7864320)
    payload = ",".join(base64.b64encode(_png(f)).decode() for f in frames)
    (got, meta) = io_.load_base64("video/jpeg", payload).media
    kept = frames if n <= 64 else [frames[i] for i in np.linspace(0, n - 1, 64, dtype=int)]
    want, want_meta = fetch_video({"video": kept, "total_pixels": 7864320}, image_patch_size=16,
                                  return_video_metadata=True)
    assert got.shape == tuple(want.permute(0, 2, 3, 1).shape)  # never stretched to 64
    assert got.shape[0] == n + (n % 2) if n <= 64 else got.shape[0] == 64
    assert got.dtype == np.uint8  # the reference rounds to uint8 before its .float()
    assert torch.equal(torch.from_numpy(got).float(), want.permute(0, 2, 3, 1))
    assert meta["fps"] == 2.0 and meta["frames_indices"] == list(range(got.shape[0]))
    assert meta["do_sample_frames"] is False


def test_data_url_parameters():
    assert mc._params("video/mp4;fps=2;max_frames=8", "v") == ("video/mp4", {"fps": 2.0, "max_frames": 8})
    assert mc._params("Video/MP4;name=x.mp4", "v") == ("video/mp4", {})
    with pytest.raises(MediaError, match="max_frames='one'"):
        mc._params("video/mp4;max_frames=one", "v")
    assert mc._params("video/mp4;fps=0;max_frames=0", "v") == ("video/mp4", {})  # upstream: 0 is the default
    for bad in ("fps=nan", "fps=inf", "fps=-1", "max_frames=1"):
        with pytest.raises(MediaError, match=bad.replace("=", "=").split("=")[0]):
            mc._params(f"video/mp4;{bad}", "v")


def test_bad_image_is_a_named_media_error():
    with pytest.raises(MediaError, match="cannot decode image"):
        IMAGE_IO.load_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MediaError, match="empty"):
        IMAGE_IO.load_bytes(b"")


def test_connector_is_registered_once():
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY

    mc.register()
    mc.register()
    assert MEDIA_CONNECTOR_REGISTRY.name2class[mc.NAME] is mc.Qwen3VLMediaConnector


def test_configured_pixel_bounds_reach_the_connector():
    """A config's media.min_pixels/max_pixels travel in media_io_kwargs (the engine settings
    the launcher and the plugin give vLLM) to the connector, which then resizes once, to them."""
    from qwen3vl_vllm.prompts.inputs import MediaSettings
    from qwen3vl_vllm.prompts.engine import media_io_kwargs

    bounds = MediaSettings(min_pixels=8192, max_pixels=65536)
    connector = mc.Qwen3VLMediaConnector(media_io_kwargs=media_io_kwargs(bounds))
    io_ = connector._reference_image_io()
    assert (io_.min_pixels, io_.max_pixels) == (8192, 65536)
    img = io_.load_bytes(_png(_noise(640, 480, 9))).media
    assert img.width * img.height <= 65536 and img.width % 32 == 0 and img.height % 32 == 0
    default = mc.Qwen3VLMediaConnector(media_io_kwargs=media_io_kwargs())._reference_image_io()
    assert default.max_pixels == 1843200
