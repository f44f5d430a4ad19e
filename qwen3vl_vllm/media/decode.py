"""Images and videos: load from anything users hold, then resize/sample like the reference.

The reference preprocesses with qwen-vl-utils (image_patch_size 16) and then calls the HF
processor with ``do_resize=False``. This module reproduces those pixels (SPEC §1) so vLLM sees
exactly what the reference model sees:

- images: ``smart_resize`` to multiples of 32 within [min_pixels, max_pixels] (Python ``round``,
  i.e. half to even; aspect ratio > 200 is an error), PIL bicubic; RGBA is composited on white,
  other modes go through ``convert("RGB")``;
- frame lists: each frame resized as an image with factor 64 and qwen-vl-utils' image defaults
  (its frame path passes the *merged* factor as the patch size), padded to an even count by
  repeating the last frame, then the clip resized to the ``total_pixels`` budget with
  torchvision bicubic (antialias), giving float pixels; timestamps use a sampling fps of 2.0;
- video files: decoded with PyAV (qwen-vl-utils' own readers do not work on these machines),
  ``nframes`` from fps/max_frames as qwen-vl-utils computes it, indices
  ``torch.linspace(0, n-1, k).round()``, only those frames kept while the stream decodes, then
  the same clip resize.

Bytes come from ``sources`` (paths, URLs, data URLs, under a ``MediaPolicy``); images may also
be ``PIL.Image`` objects and frames HxWx3 uint8 arrays. Every failure raises ``MediaError``
naming the item.

Example::

    >>> from qwen3vl_vllm.media.decode import smart_resize
    >>> smart_resize(40, 1200, factor=32, min_pixels=4096, max_pixels=1843200)
    (32, 1216)
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any

from qwen3vl_vllm.errors import MediaError
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, FRAME_LIST_FPS, IMAGE_FACTOR
from qwen3vl_vllm.media.budget import REQUEST_BYTES_ENV, DecodeBudget, DecodeLimitError, image_bytes
from qwen3vl_vllm.media import split_resize
from qwen3vl_vllm.media.sources import DEFAULT_POLICY, FORMAT_HINT, MediaPolicy, source_bytes

MAX_RATIO = 200
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_FRAME_MIN_PIXELS = 128 * IMAGE_FACTOR * IMAGE_FACTOR
VIDEO_FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR
FRAME_IMAGE_FACTOR = 2 * IMAGE_FACTOR  # qwen-vl-utils quirk for frame lists
IMAGE_MIN_TOKENS, IMAGE_MAX_TOKENS = 4, 16384
DEFAULT_TOTAL_PIXELS = 128000 * IMAGE_FACTOR * IMAGE_FACTOR * 0.9  # qwen-vl-utils MODEL_SEQ_LEN


# ---------------------------------------------------------------- sizes


def smart_resize(height: int, width: int, *, factor: int = IMAGE_FACTOR, min_pixels: float,
                 max_pixels: float) -> tuple[int, int]:
    """qwen-vl-utils' resize rule: multiples of ``factor`` within [min_pixels, max_pixels]."""
    if min(height, width) <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is above "
                         f"{MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---------------------------------------------------------------- loading


def to_rgb(image):
    """qwen-vl-utils' conversion: RGBA on white; every other mode via convert('RGB')."""
    from PIL import Image

    if image.mode == "RGB":
        return image  # convert("RGB") would only copy it
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def load_image(src: Any, where: str = "image", policy: MediaPolicy = DEFAULT_POLICY, *,
               opener=None, budget: DecodeBudget | None = None):
    """Any supported image source -> a fully decoded RGB ``PIL.Image``.

    ``opener`` (file object -> unloaded ``PIL.Image``) replaces ``PIL.Image.open`` for encoded
    bytes; the server's media connector passes vLLM's format allow-list and pixel cap.
    ``budget`` is charged the decoded pixels from the header, before anything is decoded (see
    ``budget``); the RGB copy is held from its pool and the original credited once converted.
    """
    from PIL import Image, UnidentifiedImageError

    charged = 0
    if isinstance(src, Image.Image):
        image = src
    elif hasattr(src, "ndim") and hasattr(src, "dtype"):
        try:
            image = Image.fromarray(src)
        except Exception as e:  # noqa: BLE001
            raise MediaError(where, f"cannot make an image from array {getattr(src, 'shape', '?')}: {e}",
                             "Give an HxWx3 uint8 array") from None
    else:
        data = source_bytes(src, where, policy)
        if not data:
            raise MediaError(where, "image data is empty (0 bytes)", FORMAT_HINT)
        try:
            image = (opener or Image.open)(io.BytesIO(data))
            if budget is not None:  # before a pixel is decoded
                charged = image_bytes(image.mode, *image.size)
                budget.charge(charged, where)
            image.load()
        except MediaError:
            raise
        except Image.DecompressionBombError as e:
            raise MediaError(where, f"image refused as a decompression bomb ({e})",
                             "Send a smaller image") from None
        except UnidentifiedImageError:
            raise MediaError(where, "cannot decode image: not a recognised image format",
                             FORMAT_HINT) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise MediaError(where, f"cannot decode image: {e}",
                             "The file looks corrupt or truncated. " + FORMAT_HINT) from None
        if budget is not None and image_bytes(image.mode, *image.size) > charged:
            # decoding may change the size or mode (ICO/ICNS pick a size, JPEG drafts): pay the rest
            extra = image_bytes(image.mode, *image.size) - charged
            budget.charge(extra, where)
            charged += extra
    if image.width == 0 or image.height == 0:
        raise MediaError(where, f"image has zero size ({image.width}x{image.height})", FORMAT_HINT)
    if budget is not None and image.mode != "RGB":
        budget.hold(image_bytes("RGB", *image.size), where)
    try:
        rgb = to_rgb(image)
    except Exception as e:  # noqa: BLE001
        raise MediaError(where, f"cannot convert image to RGB: {e}", FORMAT_HINT) from None
    if budget is not None and rgb is not image:
        budget.credit(charged)  # the decoded original is dropped when this returns
    return rgb


def resize_image(image, *, min_pixels: float, max_pixels: float, factor: int = IMAGE_FACTOR,
                 where: str = "image", budget: DecodeBudget | None = None):
    """Resize an RGB image to its reference size (PIL bicubic); one already at that size is
    returned as it is (PIL would return a copy of the same pixels). With ``budget``, the copy is
    held from its pool and the input credited (the caller drops it)."""
    try:
        h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=min_pixels,
                            max_pixels=max_pixels)
    except ValueError as e:
        raise MediaError(where, str(e), "Crop or pad the image to a less extreme shape") from None
    if (w, h) == image.size:
        return image
    if budget is not None:
        budget.hold(image_bytes("RGB", w, h), where)
    out = split_resize.resize(image, (w, h), budget=budget)  # Image.resize's pixels
    if budget is not None:
        budget.credit(image_bytes(image.mode, *image.size))
    return out


# Where Pillow keeps an orientation that ``ImageOps.exif_transpose`` would apply
# what downstream code acts on that the reference never does: EXIF/XMP orientation (vLLM rotates
# by it) and a tRNS colour key (vLLM 0.33 composites an RGB image that has one onto white)
_ACTED_ON_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp", "transparency")


def bare_pixels(image, source=None):
    """The image with no metadata left that could change its pixels downstream.

    Why: qwen-vl-utils never applies EXIF orientation and never looks at a palette image's
    transparent colour (``convert("RGB")`` keeps the pixels and leaves the key in ``info``). vLLM
    does both to every PIL image it is handed: it rotates by the EXIF block
    (``normalize_image``: a photo with orientation 6 gave cosine 0.94), and from 0.33 its
    ``convert_image_mode`` pastes an RGB image whose ``info`` has ``transparency`` onto white
    (a palette PNG with a tRNS chunk gave cosine 0.9953). The pixels are untouched; an image
    that is the caller's own object (``source``) is copied first.
    """
    if not any(key in image.info for key in _ACTED_ON_INFO) and getattr(image, "_exif", None) is None:
        return image
    if image is source:
        image = image.copy()
    for key in _ACTED_ON_INFO:
        image.info.pop(key, None)
    image._exif = None  # a parsed EXIF block cached on the object
    return image


def prepare_image(src: Any, where: str = "image", policy: MediaPolicy = DEFAULT_POLICY, *,
                  min_pixels: float, max_pixels: float, opener=None,
                  budget: DecodeBudget | None = None):
    """An image source -> the RGB image the reference model sees (load, RGB rule, resize),
    without metadata that vLLM would act on (see ``bare_pixels``)."""
    image = load_image(src, where, policy, opener=opener, budget=budget)
    out = resize_image(image, min_pixels=min_pixels, max_pixels=max_pixels, where=where,
                       budget=budget)
    return bare_pixels(out, source=src)


def fetch_image(part: dict, where: str = "image", policy: MediaPolicy = DEFAULT_POLICY, *,
                budget: DecodeBudget | None = None):
    """An image content part -> the RGB image the reference model sees."""
    return prepare_image(part["image"], where, policy,
                         min_pixels=part.get("min_pixels", IMAGE_MIN_TOKENS * IMAGE_FACTOR**2),
                         max_pixels=part.get("max_pixels", IMAGE_MAX_TOKENS * IMAGE_FACTOR**2),
                         budget=budget)


# ---------------------------------------------------------------- video


def smart_nframes(total_frames: int, video_fps: float, *, fps: float, max_frames: int | None,
                  where: str = "video") -> int:
    """qwen-vl-utils' frame count for a video file."""
    min_frames = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    cap = max_frames if max_frames is not None else min(FPS_MAX_FRAMES, total_frames)
    max_f = math.floor(cap / FRAME_FACTOR) * FRAME_FACTOR
    n = total_frames / video_fps * fps
    n = min(min(max(n, min_frames), max_f), total_frames)
    n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise MediaError(where, f"video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed",
                         "Send a longer video, or its frames as a list")
    return n


def _video_error(where: str, e: Exception) -> MediaError:
    return MediaError(where, f"cannot decode video: {type(e).__name__}: {e}",
                      "The file looks corrupt. Send an mp4/webm/mkv file, or its frames")


def _open_stream(container, where: str):
    if not container.streams.video:
        raise MediaError(where, "file has no video stream", "Send an mp4/webm/mkv file")
    return container.streams.video[0]


def _count_frames(data: bytes, where: str) -> tuple[int, float, int]:
    """(frame count, fps, bytes per RGB frame) from the container, without decoding: the
    stream's frame count when the container records one, else its packets counted. The frame
    size is the header's (a first estimate only: every decoded frame is measured itself)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            stream = _open_stream(container, where)
            rate = stream.average_rate or stream.guessed_rate
            frame_bytes = int(stream.codec_context.width or 0) * int(stream.codec_context.height or 0) * 3
            total = int(stream.frames or 0)
            if total <= 0:
                total = sum(1 for packet in container.demux(stream) if packet.size)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many error types
        raise _video_error(where, e) from None
    # a stream without a frame rate: count frames as if at the reference's sampling fps, so
    # smart_nframes samples one frame per frame
    return total, (float(rate) if rate else DEFAULT_SETTINGS.fps), frame_bytes


def _decode_indices(data: bytes, keep: set[int], where: str, *, budget: DecodeBudget | None,
                    convert=None, count: bool = True) -> tuple[dict[int, Any], int]:
    """Decode the whole stream once, keeping only the frames in ``keep``: memory holds one
    decoded frame plus the kept ones (``convert(rgb)`` of each, e.g. already resized), whatever
    the video's length.

    Every decoded frame is measured: a frame whose size differs from the first one (a
    resolution change mid-stream, which the container header does not show) is refused. A kept
    frame is charged to ``budget`` before it is converted; the decode time is checked per frame.

    One reformatter converts every kept frame: ``frame.to_ndarray(format="rgb24")`` builds a
    new swscale context per frame, which cost far more than decoding (all 12 frames of a 160x120
    clip: 4.6 ms, 2.0 ms with one reformatter); the pixels are the same (unit-tested)."""
    import av
    from av.video.reformatter import VideoReformatter

    kept: dict[int, Any] = {}
    n = 0
    size = None
    rgb = VideoReformatter()
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = _open_stream(container, where)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.width, frame.height)
                elif (frame.width, frame.height) != size:
                    raise MediaError(where, f"the video's resolution changes mid-stream "
                                     f"({size[0]}x{size[1]} -> {frame.width}x{frame.height} at "
                                     f"frame {n})", "Re-encode it at one size (e.g. ffmpeg -i "
                                     "in.mp4 -vf scale=W:H out.mp4)")
                if budget is not None:
                    budget.check_time(where)
                if n in keep:
                    nbytes = frame.width * frame.height * 3
                    if budget is not None:
                        budget.charge(nbytes, where, count=count)
                    array = rgb.reformat(frame, format="rgb24").to_ndarray()
                    if convert is not None:
                        array = convert(array)
                        if budget is not None:
                            budget.credit(nbytes)  # the RGB frame is dropped, its conversion kept
                    kept[n] = array
                n += 1
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _video_error(where, e) from None
    return kept, n


def check_video_bytes(data: bytes, where: str = "video") -> None:
    """Cheap validity check: the container opens and its first video frame decodes."""
    import av

    if not data:
        raise MediaError(where, "video data is empty (0 bytes)", "Send an mp4/webm/mkv file")
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = _open_stream(container, where)
            for _ in container.decode(stream):
                return
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _video_error(where, e) from None
    raise MediaError(where, "video has zero decodable frames", "Send a non-empty video")


def _over_budget_early(budget: DecodeBudget | None, n: int, frame_bytes: int, where: str) -> None:
    """Refuse before decoding when the header already says the sampled frames cannot fit."""
    if budget is not None and budget.limit and n * frame_bytes > budget.limit - budget.used:
        raise DecodeLimitError(where, f"its {n} sampled frames of {frame_bytes // 3} pixels need "
                               f"{n * frame_bytes / 2**20:.0f} MiB decoded, above what this "
                               f"request may still decode ({(budget.limit - budget.used) / 2**20:.0f}"
                               f" MiB of {budget.limit / 2**20:.0f} MiB, {REQUEST_BYTES_ENV})",
                               "Send a lower-resolution video, or fewer frames (fps or max_frames)")


def read_video_file(src: Any, where: str = "video", *, fps: float, max_frames: int | None,
                    policy: MediaPolicy = DEFAULT_POLICY, budget: DecodeBudget | None = None,
                    total_pixels: float | None = None, min_pixels: float | None = None,
                    max_pixels: float | None = None):
    """Decode a video file and sample frames as qwen-vl-utils does, keeping only those frames.

    The frame count comes from the container (or its packets), the kept indices from
    qwen-vl-utils' rule (``smart_nframes``, ``linspace(0, n-1, k).round()``), and only those
    frames are converted and kept while the stream is decoded: an hour-long upload costs decode
    time (bounded by ``budget``), not memory.

    Without ``total_pixels`` the kept frames stay as decoded; with it, each is resized to the
    reference's clip size as soon as it is decoded (``clip_size``), so no full-size copy of the
    clip is ever held. Either way the clip is uint8 holding the reference's values (its resize
    rounds to uint8 before its ``.float()``).

    Returns ``(frames, metadata, sample_fps)``: a torch tensor (T, C, H, W), the metadata dict
    (fps, frames_indices, total_num_frames, video_backend) and the sampling fps.
    """
    import torch

    data = source_bytes(src, where, policy)
    if not data:
        raise MediaError(where, "video data is empty (0 bytes)", "Send an mp4/webm/mkv file")
    total, video_fps, frame_bytes = _count_frames(data, where)
    if total <= 0:
        raise MediaError(where, "video has zero decodable frames", "Send a non-empty video")
    for attempt in range(2):  # a container whose frame count is off is decoded again with the real one
        n = smart_nframes(total, video_fps, fps=fps, max_frames=max_frames, where=where)
        idx = torch.linspace(0, total - 1, n).round().long().tolist()
        if attempt == 0:
            _over_budget_early(budget, n, frame_bytes, where)
        resizer = None
        if total_pixels is not None:
            resizer = _FrameResizer(n, where, budget, total_pixels=total_pixels,
                                    min_pixels=min_pixels, max_pixels=max_pixels)
        kept, decoded = _decode_indices(data, set(idx), where, budget=budget, convert=resizer,
                                        count=attempt == 0)
        if decoded == total:
            break
        if resizer is not None:
            resizer.drop()  # the first pass's frames
        total = decoded
        if total <= 0:
            raise MediaError(where, "video has zero decodable frames", "Send a non-empty video")
    else:
        raise MediaError(where, "the video's frame count changes between reads",
                         "Re-encode the video (e.g. ffmpeg -i in.mp4 out.mp4)")
    if resizer is None:
        clip = torch.stack([torch.from_numpy(kept[i]) for i in idx]).permute(0, 3, 1, 2).contiguous()
    else:  # rows were written in decode order, which is the order of the (ascending) indices
        clip = resizer.out[[kept[i] for i in idx]] if len(set(idx)) != len(idx) else resizer.out
    metadata = {"fps": video_fps, "frames_indices": idx, "total_num_frames": total,
                "video_backend": "pyav"}
    return clip, metadata, n / max(total, 1e-6) * video_fps


class _FrameResizer:
    """HWC uint8 frames -> rows of one uint8 (T, C, h, w) clip at the reference's size
    (``clip_size``), written in place as they are decoded. No full-size copy of the clip, and no
    second copy at the end."""

    def __init__(self, nframes: int, where: str, budget: DecodeBudget | None, **bounds):
        self.nframes, self.where, self.budget, self.bounds = nframes, where, budget, bounds
        self.out = None
        self.rows = 0

    def __call__(self, array) -> int:
        import torch

        height, width = array.shape[:2]
        h, w = clip_size(self.nframes, height, width, where=self.where, **self.bounds)
        same = (h, w) == (height, width)
        if self.out is None:
            if self.budget is not None:
                self.budget.hold(self.nframes * h * w * 3, self.where)
            # stored THWC (what vLLM takes), seen as TCHW: handing it to vLLM copies nothing
            store = torch.empty((self.nframes, h, w, 3), dtype=torch.uint8)
            self.out = store.permute(0, 3, 1, 2)
        row = self.rows
        if same:
            self.out[row] = torch.from_numpy(array).permute(2, 0, 1)
        else:
            _bicubic_hwc(array, h, w, out=self.out[row], budget=self.budget, where=self.where)
        self.rows += 1
        return row

    def drop(self) -> None:
        if self.out is not None and self.budget is not None:
            self.budget.credit(self.out.numel() * self.out.element_size())
        self.out = None


def _bicubic(clip, h: int, w: int):
    """``torchvision F.resize(clip, [h, w], BICUBIC, antialias=True).float()``, the reference's
    frame resize, with the same arithmetic but fewer passes over the frames for uint8 clips:
    torchvision interpolates in float32, clamps, rounds, casts to uint8, and the reference casts
    back to float32; the rounded float32 values are the same numbers (unit-tested equal).
    """
    import torch

    if clip.dtype != torch.uint8:  # float64 would interpolate in float64: torchvision's own path
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        return F.resize(clip, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    frames = clip.float()
    if tuple(clip.shape[-2:]) == (h, w):  # torchvision returns the clip untouched
        return frames
    out = torch.nn.functional.interpolate(frames, size=[h, w], mode="bicubic", align_corners=False,
                                          antialias=True)
    return out.clamp_(0, 255).round_()


def _bicubic_hwc(array, h: int, w: int, *, out=None, budget: DecodeBudget | None = None,
                 where: str = "video"):
    """``_bicubic`` of one HxWx3 uint8 frame -> (3, h, w) uint8 (into ``out`` when given), one
    colour plane at a time: each plane is interpolated on its own in either case, so the numbers
    are the same (unit-tested), and only one plane is ever held as float (an 8000x8000 frame:
    256 MB, not 768 MB). The rounded values are integers in 0..255, so uint8 holds them exactly,
    in a quarter of the bytes the engine is sent."""
    import numpy as np
    import torch

    if out is None:
        out = torch.empty((3, h, w), dtype=torch.uint8)
    height, width = array.shape[:2]
    for c in range(3):
        if budget is not None:
            budget.hold(height * width * 4, where)
        plane = torch.from_numpy(np.ascontiguousarray(array[:, :, c])).float()[None, None]
        out[c] = _bicubic_plane(plane, h, w)
        del plane
        if budget is not None:
            budget.credit(height * width * 4)
    return out


def _bicubic_plane(plane, h: int, w: int):
    import torch

    if tuple(plane.shape[-2:]) == (h, w):
        return plane[0, 0]
    out = torch.nn.functional.interpolate(plane, size=[h, w], mode="bicubic", align_corners=False,
                                          antialias=True)
    return out.clamp_(0, 255).round_()[0, 0]


def clip_size(nframes: int, height: int, width: int, *, total_pixels: float,
              min_pixels: float | None = None, max_pixels: float | None = None,
              where: str = "video") -> tuple[int, int]:
    """(h, w) qwen-vl-utils resizes a clip of ``nframes`` frames of ``height`` x ``width`` to:
    each frame within the per-frame bounds and the clip within ``total_pixels``."""
    min_px = VIDEO_FRAME_MIN_PIXELS if min_pixels is None else min_pixels
    per_frame = max(min(VIDEO_FRAME_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(min_px * 1.05))
    max_px = min(per_frame, max_pixels) if max_pixels is not None else per_frame
    try:
        return smart_resize(height, width, factor=IMAGE_FACTOR, min_pixels=min_px, max_pixels=max_px)
    except ValueError as e:
        raise MediaError(where, str(e), "Crop the video to a less extreme shape") from None


def frame_list_clip(frames: list, where: str = "video", *, total_pixels: float, load=None,
                    min_pixels: float | None = None, max_pixels: float | None = None,
                    budget: DecodeBudget | None = None, policy: MediaPolicy = DEFAULT_POLICY,
                    numbers: list[int] | None = None):
    """A frame list -> ``(uint8 tensor (T, C, H, W), metadata)`` as qwen-vl-utils prepares it
    (its float32 clip is this one's ``.float()``):
    each frame loaded and resized as an image (factor 64), the list padded to an even count by
    repeating the last frame, the clip resized to the ``total_pixels`` budget.

    Frames are handled one at a time (load, resize, clip-resize, drop), so memory holds one
    decoded frame and the final clip, never the list at full size. ``load(frame, where)`` gives
    an RGB image (default: ``load_image`` under ``policy``, charged to ``budget``). Errors name
    a frame by its place in ``frames``, or by ``numbers[k]`` (its place in the list it was
    sampled from).
    """
    import numpy as np
    import torch

    if load is None:
        def load(frame, w):
            return load_image(frame, w, policy, budget=budget)
    if not frames:
        raise MediaError(where, "a video given as frames has no frames",
                         "Give at least one frame, or leave the video out")
    n = math.ceil(len(frames) / FRAME_FACTOR) * FRAME_FACTOR
    out = size = target = None
    for k, frame in enumerate(frames):
        w = f"{where}.frames[{k if numbers is None else numbers[k]}]"
        image = resize_image(load(frame, w), min_pixels=IMAGE_MIN_TOKENS * FRAME_IMAGE_FACTOR**2,
                             max_pixels=IMAGE_MAX_TOKENS * FRAME_IMAGE_FACTOR**2,
                             factor=FRAME_IMAGE_FACTOR, where=w, budget=budget)
        if size is None:
            size = image.size
            target = clip_size(n, image.height, image.width, total_pixels=total_pixels,
                               min_pixels=min_pixels, max_pixels=max_pixels, where=where)
            if budget is not None:
                budget.hold(n * target[0] * target[1] * 3, where)  # the final clip
            # stored THWC (what vLLM takes), seen as TCHW: handing it to vLLM copies nothing
            out = torch.empty((n, *target, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        elif image.size != size:
            raise MediaError(where, f"frames have different sizes after resizing ({size} and "
                             f"{image.size} at frame {k})", "Give frames of one size")
        if budget is not None:
            budget.hold(image.width * image.height * 3, w)
        array = np.asarray(image)
        if budget is not None:
            budget.credit(image_bytes(image.mode, *image.size))
        del image  # only the HxWx3 array is left
        _bicubic_hwc(array, *target, out=out[k], budget=budget, where=w)
        if budget is not None:
            budget.credit(array.nbytes)
        del array
    out[len(frames):] = out[len(frames) - 1]
    return out, {"fps": FRAME_LIST_FPS, "frames_indices": list(range(n)), "total_num_frames": n}


def fetch_video(part: dict, where: str = "video", policy: MediaPolicy = DEFAULT_POLICY, *,
                budget: DecodeBudget | None = None, uint8: bool = False):
    """A video content part -> ``(float32 tensor (T, C, H, W), metadata)`` as the reference sees it.

    With ``uint8`` the clip comes as the uint8 tensor whose ``.float()`` that is (the reference
    rounds every resized frame to uint8): a quarter of the bytes for vLLM to process and ship.
    Frames the caller decoded itself: uint8 ones stay uint8, others become float32."""
    import numpy as np
    import torch

    video = part["video"]
    if isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], dict):
        frames, metadata = video  # already decoded and sampled by the caller
        clip = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2)
        return (clip if uint8 and clip.dtype == torch.uint8 else clip.float()), dict(metadata)
    bounds = {"total_pixels": part.get("total_pixels", DEFAULT_TOTAL_PIXELS),
              "min_pixels": part.get("min_pixels"), "max_pixels": part.get("max_pixels")}
    if isinstance(video, (str, os.PathLike)):
        clip, metadata, _ = read_video_file(video, where, fps=part.get("fps", DEFAULT_SETTINGS.fps),
                                            max_frames=part.get("max_frames"), policy=policy,
                                            budget=budget, **bounds)
    else:
        clip, metadata = frame_list_clip(list(video), where, policy=policy, budget=budget, **bounds)
    return (clip if uint8 else clip.float()), metadata


def vllm_video_metadata(meta: dict) -> dict:
    """The metadata vLLM's Qwen3-VL processor needs to give the reference's timestamps."""
    fps = float(meta["fps"])
    total = int(meta["total_num_frames"])
    return {"fps": fps, "duration": total / fps, "total_num_frames": total,
            "frames_indices": [int(i) for i in meta["frames_indices"]],
            "video_backend": meta.get("video_backend", "frames"), "do_sample_frames": False}


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_data_url(image) -> str:
    """A lossless data URL for an RGB image."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


__all__ = ["smart_resize", "load_image", "fetch_image", "fetch_video", "read_video_file",
           "png_data_url"]
