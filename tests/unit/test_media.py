"""media.py against qwen-vl-utils itself (the reference's preprocessing)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from qwen3vl_vllm.media import decode as M
from qwen3vl_vllm.errors import MediaError


@pytest.mark.parametrize("h,w", [(40, 1200), (100, 150), (20, 30), (1400, 1500), (3000, 2000),
                                 (33, 33), (48, 80), (1, 150), (999, 1001)])
def test_smart_resize_matches_qwen_vl_utils(h, w):
    from qwen_vl_utils import smart_resize

    ours = M.smart_resize(h, w, factor=32, min_pixels=4096, max_pixels=1843200)
    assert ours == smart_resize(h, w, factor=32, min_pixels=4096, max_pixels=1843200)


def test_known_resize():
    assert M.smart_resize(40, 1200, factor=32, min_pixels=4096, max_pixels=1843200) == (32, 1216)
    with pytest.raises(ValueError, match="aspect ratio"):
        M.smart_resize(1, 300, factor=32, min_pixels=4096, max_pixels=1843200)


def _img(mode, w=123, h=77, seed=0):
    arr = (np.random.RandomState(seed).rand(h, w, 4) * 255).astype("uint8")
    return Image.fromarray(arr, "RGBA").convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P"])
def test_fetch_image_pixels_match_qwen_vl_utils(mode, tmp_path):
    from qwen_vl_utils.vision_process import fetch_image

    img = _img(mode)
    path = tmp_path / "x.png"
    img.save(path)
    raw = path.read_bytes()
    sources = [img, str(path), "file://" + str(path), raw,
               "data:image/png;base64," + base64.b64encode(raw).decode()]
    expected = np.array(fetch_image({"image": str(path), "min_pixels": 4096, "max_pixels": 1843200},
                                    image_patch_size=16))
    for src in sources:
        got = M.fetch_image({"image": src, "min_pixels": 4096, "max_pixels": 1843200})
        assert np.array_equal(np.array(got), expected), (mode, type(src))


def test_frame_list_matches_qwen_vl_utils():
    from qwen_vl_utils.vision_process import fetch_video

    frames = [_img("RGB", 80, 64, seed=i) for i in range(5)]
    part = {"type": "video", "video": frames, "total_pixels": 7864320}
    (ref, ref_meta), ref_fps = fetch_video(part, image_patch_size=16, return_video_sample_fps=True,
                                           return_video_metadata=True)
    clip, meta = M.fetch_video(part)
    assert clip.shape == ref.shape
    assert float((clip - ref).abs().max()) == 0.0
    assert meta["fps"] == ref_meta["fps"] == ref_fps == 2.0
    assert list(meta["frames_indices"]) == list(ref_meta["frames_indices"])


def test_video_file_sampling_matches_qwen_vl_utils(tmp_path):
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    for total, vfps, fps, mf in [(12, 4.0, 1.0, 64), (300, 30.0, 1.0, 64), (300, 30.0, 2.0, 16),
                                 (7, 25.0, 1.0, 64)]:
        ele = {"fps": fps, "max_frames": mf}
        assert M.smart_nframes(total, vfps, fps=fps, max_frames=mf) == smart_nframes(ele, total, vfps)
    _ = torch


def test_clip_resize_equals_torchvision_bicubic():
    """The reference resizes frames with torchvision (uint8 in, rounded, then float32): the
    faster in-place path must give the same numbers, down, up and at the same size."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    rng = np.random.default_rng(12)
    for case in range(60):
        t, h, w = int(rng.integers(1, 9)), int(rng.integers(4, 260)), int(rng.integers(4, 260))
        oh, ow = (h, w) if case % 10 == 0 else (int(rng.integers(1, 17)) * 32, int(rng.integers(1, 17)) * 32)
        if case % 3:  # noise: the most values near a rounding boundary
            arr = rng.integers(0, 256, (t, 3, h, w), dtype=np.uint8)
        else:  # smooth gradients with hard edges: overshoot that must be clamped
            arr = (np.indices((t, 3, h, w)).sum(0) * 37 % 256).astype(np.uint8)
        clip = torch.from_numpy(arr)
        want = F.resize(clip, [oh, ow], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
        got = M._bicubic(clip, oh, ow)
        assert got.dtype == torch.float32 and got.shape == want.shape, case
        assert torch.equal(got, want), (case, (t, h, w), (oh, ow), float((got - want).abs().max()))
    floats = torch.rand(2, 3, 50, 70, dtype=torch.float64) * 255  # not uint8: torchvision's own path
    want = F.resize(floats, [64, 96], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    assert torch.equal(M._bicubic(floats, 64, 96), want)


@pytest.mark.parametrize("w,h,n", [(96, 64, 12), (160, 120, 30), (33 * 2, 17 * 2, 7)])
def test_decoded_frames_equal_plain_pyav_conversion(tmp_path, w, h, n):
    """read_video_file converts frames with one shared reformatter; the pixels must equal
    PyAV's per-frame ``to_ndarray(format="rgb24")`` of the same frames."""
    import av

    from cases import write_mp4

    path = write_mp4(tmp_path / "v.mp4", n=n, w=w, h=h, fps=4)
    with av.open(str(path)) as container:
        plain = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    clip, meta, _ = M.read_video_file(str(path), "v", fps=2.0, max_frames=64)
    assert meta["total_num_frames"] == len(plain) == n
    want = np.stack([plain[i] for i in meta["frames_indices"]])
    assert np.array_equal(clip.permute(0, 2, 3, 1).numpy(), want)


@pytest.mark.parametrize("src,fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "cannot decode image"),
    (b"", "empty"),
    ("data:image/png;base64,Zm9vYmFy", "not a recognised image format"),
    ("ftp://example.invalid/x.png", "unsupported URL scheme"),
    ("/nonexistent/file.png", "file not found"),
])
def test_bad_images_raise_named_media_errors(src, fragment):
    with pytest.raises(MediaError) as err:
        M.load_image(src, "inputs[7].image[0]")
    assert str(err.value).startswith("inputs[7].image[0]:")
    assert fragment in str(err.value)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    _img("RGB", 200, 200).save(buf, format="PNG")
    with pytest.raises(MediaError, match="inputs\\[0\\]"):
        M.load_image(buf.getvalue()[:300], "inputs[0]")


def test_local_root_policy(tmp_path):
    inside = tmp_path / "ok"
    inside.mkdir()
    img_path = inside / "a.png"
    _img("RGB").save(img_path)
    outside = tmp_path / "b.png"
    _img("RGB").save(outside)
    policy = M.MediaPolicy(local_root=str(inside))
    assert M.load_image(str(img_path), "x", policy).size == (123, 77)
    with pytest.raises(MediaError, match="outside the allowed folder"):
        M.load_image(str(inside / ".." / "b.png"), "x", policy)
    (inside / "link.png").symlink_to(outside)
    with pytest.raises(MediaError, match="outside the allowed folder"):
        M.load_image(str(inside / "link.png"), "x", policy)
    with pytest.raises(MediaError, match="disabled"):
        M.load_image(str(img_path), "x", M.MediaPolicy(allow_local_files=False))


# ---- URL policy: no fetches into this machine's network unless asked, every redirect checked


@pytest.fixture()
def local_http():
    """A tiny HTTP server on 127.0.0.1 (stopped after the test): /img.png, redirects."""
    import http.server
    import io as _io
    import threading

    from PIL import Image

    buf = _io.BytesIO()
    Image.new("RGB", (40, 30), (9, 8, 7)).save(buf, format="PNG")
    png = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            routes = {"/to-file": "file:///etc/passwd", "/loop": "/loop", "/to-img": "/img.png"}
            if self.path in routes:
                self.send_response(302)
                self.send_header("Location", routes[self.path])
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_urls_into_this_network_are_refused_by_default(local_http):
    with pytest.raises(MediaError, match=r"x: URL http://127\.0\.0\.1:\d+/img\.png points to 127\.0\.0\.1"):
        M.load_image(local_http + "/img.png", "x")
    for url in ("http://localhost/a.png", "http://169.254.169.254/latest", "http://10.1.2.3/a.png",
                "http://[::1]/a.png", "http://0.0.0.0/a.png"):
        with pytest.raises(MediaError, match="refused"):
            M.source_bytes(url, "x")  # refused before any connection is attempted


def test_opt_in_and_every_redirect_is_checked(local_http):
    ok = M.MediaPolicy(allow_private_urls=True)
    assert M.load_image(local_http + "/to-img", "x", ok).size == (40, 30)
    with pytest.raises(MediaError, match="URL scheme 'file' is not allowed"):
        M.source_bytes(local_http + "/to-file", "x", ok)
    with pytest.raises(MediaError, match="more than 5 redirects"):
        M.source_bytes(local_http + "/loop", "x", ok)
    small = M.MediaPolicy(allow_private_urls=True, max_bytes=10)
    with pytest.raises(MediaError, match="download exceeds 10 bytes"):
        M.source_bytes(local_http + "/img.png", "x", small)


def test_local_files_stay_allowed(tmp_path):
    from PIL import Image

    path = tmp_path / "mine.png"
    Image.new("RGB", (8, 8)).save(path)
    assert M.load_image(str(path), "x").size == (8, 8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_never_applied(orientation, tmp_path):
    """qwen-vl-utils embeds the stored pixels of a photo whatever its EXIF orientation; the
    prepared image keeps no orientation, so vLLM's ``normalize_image`` (which rotates every PIL
    image by its EXIF block) leaves it as it is."""
    from qwen_vl_utils.vision_process import fetch_image
    from vllm.multimodal.image import normalize_image

    from cases import exif_photo

    path = exif_photo(tmp_path / "p.jpg", orientation=orientation)
    want = fetch_image({"image": str(path), "min_pixels": 4096, "max_pixels": 1843200}, image_patch_size=16)
    for src in (str(path), path.read_bytes(), Image.open(path)):
        got = M.prepare_image(src, min_pixels=4096, max_pixels=1843200)
        assert got.size == want.size and got.tobytes() == want.tobytes()
        after = normalize_image(got)
        assert after.size == want.size and after.tobytes() == want.tobytes(), orientation
    mine = Image.open(path)
    mine.load()
    M.prepare_image(mine, min_pixels=4096, max_pixels=1843200)
    assert "exif" in mine.info  # the caller's own image object is not changed


@pytest.mark.parametrize("colors", [16, 256])
def test_palette_transparency_is_never_composited(colors, tmp_path):
    """qwen-vl-utils converts a palette PNG with a tRNS colour key to RGB and keeps every pixel;
    ``convert("RGB")`` leaves the key in ``info``, and vLLM 0.33's ``convert_image_mode`` pastes
    an RGB image that has one onto white. The prepared image carries no key, so vLLM's mode
    conversion (run on every image it is handed) leaves the reference's pixels as they are."""
    from qwen_vl_utils.vision_process import fetch_image
    from vllm.multimodal.image import convert_image_mode

    path = tmp_path / "p.png"
    rgb = _img("RGB", h=96, w=80, seed=colors)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=colors).save(path, "PNG", transparency=3)
    want = fetch_image({"image": str(path), "min_pixels": 4096, "max_pixels": 1843200}, image_patch_size=16)
    for src in (str(path), path.read_bytes(), Image.open(path)):
        got = M.prepare_image(src, min_pixels=4096, max_pixels=1843200)
        assert "transparency" not in got.info
        after = convert_image_mode(got, "RGB")
        assert after.size == want.size and after.tobytes() == want.tobytes(), type(src)
