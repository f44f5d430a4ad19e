"""A vLLM media connector that prepares every image and frame exactly as the reference does.

Why: a plain HTTP client (curl, JavaScript, Go, the openai SDK) sends the *original* image or
frames. vLLM's own connector converts alpha modes its own way (it composites LA and palette
transparency on white, applies EXIF rotation), and leaves sizing to the HF processor, which
resizes with torchvision rather than PIL bicubic and reads frame lists with its own sampling.
Each of those gives a different vector than the reference (SPEC §1).

The plugin registers this connector under the name ``qwen3vl`` (vLLM's public
``MEDIA_CONNECTOR_REGISTRY``) and selects it through ``VLLM_MEDIA_CONNECTOR`` in the API server
of a detected checkpoint only. vLLM's URL policy (allowed local path, allowed domains, fetch
timeouts, size caps, the download cache) is inherited unchanged; only decoding and sizing differ:

- images: PIL decode (vLLM's format allow-list and pixel cap), qwen-vl-utils' RGB rule (RGBA on
  white, every other mode ``convert("RGB")``, no EXIF rotation), smart resize to multiples of 32
  within the reference's pixel bounds with PIL bicubic. An image already at its final size is
  returned bit-identical, so clients that pre-resize keep working;
- frame lists (``data:video/jpeg;base64,<f1>,<f2>,...``, PNG payloads too): at most
  ``max_frames`` frames kept as upstream samples them (a shorter list is used as given), each
  frame resized as qwen-vl-utils resizes frames, padded to an even count, the clip resized to
  the ``total_pixels`` budget; timestamps from a sampling fps of 2.0;
- video files: the package's ``qwen3vl`` video loader (PyAV, reference sampling and size). A
  data URL may carry the upstream per-item settings as media-type parameters:
  ``data:video/mp4;fps=2;max_frames=8;base64,...`` (RFC 2397 parameters).

The HF processor then sees pixels at their final size and does not resize them again.

Example (what any HTTP client can now send)::

    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' -d '{
      "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}],
      "add_generation_prompt": true}'
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pybase64
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.base import MediaIO, MediaWithBytes

from . import media
from .video_loader import load_video_file
from .errors import MediaError
from .inputs import DEFAULT_SETTINGS, sample_frame_list
from .server_errors import payload_fingerprint

NAME = "qwen3vl"
FRAME_LIST_TYPES = ("video/jpeg", "video/png")
# Per-item video settings a data URL may carry, with the bounds the offline API enforces.
URL_PARAMS = {"fps": (float, 1e-6), "max_frames": (int, 2)}


def _vllm_open(fp):
    """``PIL.Image.open`` with vLLM's format allow-list and pixel cap (no EXIF rotation)."""
    from vllm import envs
    from vllm.multimodal.image import open_image

    image = open_image(fp)
    w, h = image.size
    cap = envs.VLLM_MAX_IMAGE_PIXELS
    if cap > 0 and w * h > cap:
        # load_image names the item: "cannot decode image: image is ... (VLLM_MAX_IMAGE_PIXELS)"
        raise ValueError(f"image is {w}x{h} ({w * h} pixels), above this server's limit of "
                         f"{cap} (VLLM_MAX_IMAGE_PIXELS)")
    return image


def _open_image(data: bytes, where: str):
    """Decode as ``media.load_image`` does (the reference's RGB rule), with vLLM's opener."""
    return media.load_image(data, where, opener=_vllm_open)


def _params(media_type: str, where: str) -> tuple[str, dict]:
    """``video/mp4;fps=2;max_frames=8`` -> ("video/mp4", {"fps": 2.0, "max_frames": 8})."""
    base, *rest = [p.strip() for p in media_type.split(";")]
    out: dict[str, Any] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in URL_PARAMS:
            continue  # other RFC 2397 parameters (charset, name) carry no meaning here
        kind, minimum = URL_PARAMS[key]
        try:
            number = kind(value)
        except ValueError:
            raise MediaError(where, f"data URL parameter {key}={value!r} is not a "
                             f"{'number' if kind is float else 'whole number'}",
                             f"Use e.g. data:video/mp4;{key}={2 if kind is int else 1.0};base64,...") from None
        if number < minimum:
            raise MediaError(where, f"data URL parameter {key}={value} must be >= {minimum}")
        out[key] = number
    return base.lower(), out


def _b64decode(data: str) -> bytes:
    try:
        return pybase64.b64decode(data, validate=True)
    except ValueError:
        raise MediaError("data URL", "the payload is not valid base64",
                         "Use data:<mime>;base64,<payload>") from None


@contextlib.contextmanager
def _tagged(payload: str):
    """Tag a media error with the payload's fingerprint (``item#<id>``): the server's error
    middleware then names the item (``messages[1].content[0]``) without decoding it again."""
    try:
        yield
    except MediaError as e:
        where = e.where if e.where.startswith("video.frames") else ""
        label = f"item#{payload_fingerprint(payload)}" + (where[5:] if where else "")
        raise MediaError(label, e.problem, e.fix) from None


class ReferenceImageIO(MediaIO):
    """Images as qwen-vl-utils' ``fetch_image`` prepares them (RGB rule, PIL bicubic resize)."""

    def __init__(self, *, min_pixels: float, max_pixels: float) -> None:
        super().__init__()
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        image = media.resize_image(_open_image(data, "image"), min_pixels=self.min_pixels,
                                   max_pixels=self.max_pixels)
        config = {"qwen3vl": "reference", "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return MediaWithBytes(image, data, config)

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        with _tagged(data):
            return self.load_bytes(_b64decode(data))

    def load_file(self, filepath: Path) -> MediaWithBytes:
        return self.load_bytes(filepath.read_bytes())

    def encode_base64(self, media_obj: Any) -> str:  # pragma: no cover - not used for input
        return pybase64.b64encode(media.encode_png(media_obj)).decode()


def frame_list_video(frames: list, *, max_frames: int, total_pixels: float, where: str = "video"):
    """Decoded RGB frames -> (float32 THWC frames, metadata) as the reference prepares a frame list."""
    kept = sample_frame_list(frames, max_frames)
    clip, meta = media.fetch_video({"video": kept, "total_pixels": total_pixels}, where)
    return clip.permute(0, 2, 3, 1).contiguous().numpy(), media.vllm_video_metadata(meta)


class ReferenceVideoIO(MediaIO):
    """Frame lists and video files as the reference prepares them."""

    def __init__(self, *, fps: float, max_frames: int, frame_list_max_frames: int,
                 total_pixels: float) -> None:
        super().__init__()
        self.fps, self.max_frames = fps, max_frames
        self.frame_list_max_frames, self.total_pixels = frame_list_max_frames, total_pixels

    def _file(self, data: bytes, fps: float, max_frames: int, tag: bytes = b"") -> MediaWithBytes:
        frames, meta = load_video_file(data, fps=fps, max_frames=max_frames)
        return MediaWithBytes((frames, meta), tag + data)

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        return self._file(data, self.fps, self.max_frames)

    def load_file(self, filepath: Path) -> MediaWithBytes:
        return self.load_bytes(filepath.read_bytes())

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        with _tagged(data):
            base, params = _params(media_type, "video")
            if base in FRAME_LIST_TYPES:
                # sample first, as upstream does: frames it would not keep are never decoded
                payloads = data.split(",")
                keep = sample_frame_list(list(range(len(payloads))), self.frame_list_max_frames)
                frames = [_open_image(_b64decode(payloads[k]), f"video.frames[{k}]") for k in keep]
                video = frame_list_video(frames, max_frames=self.frame_list_max_frames,
                                         total_pixels=self.total_pixels)
                return MediaWithBytes(video, data.encode())
            fps, max_frames = params.get("fps", self.fps), params.get("max_frames", self.max_frames)
            tag = f"fps={fps};max_frames={max_frames};".encode()  # settings join the cache key
            return self._file(_b64decode(data), fps, max_frames, tag)

    def encode_base64(self, media_obj: Any) -> str:  # pragma: no cover - not used for input
        raise NotImplementedError


class Qwen3VLMediaConnector(MediaConnector):
    """vLLM's connector with reference decoding and sizing (URL policy unchanged)."""

    def _image_io(self) -> ReferenceImageIO:
        kw = self.media_io_kwargs.get("image", {})
        return ReferenceImageIO(min_pixels=kw.get("qwen3vl_min_pixels", DEFAULT_SETTINGS.min_pixels),
                                max_pixels=kw.get("qwen3vl_max_pixels", DEFAULT_SETTINGS.max_pixels))

    def _video_io(self) -> ReferenceVideoIO:
        kw = self.media_io_kwargs.get("video", {})
        max_frames = int(kw.get("qwen3vl_max_frames", DEFAULT_SETTINGS.max_frames))
        return ReferenceVideoIO(fps=float(kw.get("qwen3vl_fps", DEFAULT_SETTINGS.fps)),
                                max_frames=max_frames, frame_list_max_frames=max_frames,
                                total_pixels=float(kw.get("qwen3vl_total_pixels",
                                                          DEFAULT_SETTINGS.total_pixels)))

    def _load_data_url(self, url: str, media_io: MediaIO):
        # vLLM's version drops media-type parameters; ours hands them to the IO (fps, max_frames)
        spec, sep, data = url[5:].partition(",")
        if not sep:
            raise ValueError(f"Invalid data URL {url[:32]!r}: missing ',' separator.")
        media_type, sep, encoding = spec.rpartition(";")
        if not sep or encoding != "base64":
            raise NotImplementedError("Only base64 data URLs are supported for now.")
        return media_io.load_base64(media_type, data)

    def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB"):
        from vllm import envs

        return self.load_from_url(image_url, self._image_io(), fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB"):
        from vllm import envs

        return await self.load_from_url_async(image_url, self._image_io(),
                                              fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    def fetch_video(self, video_url: str, *, image_mode: str | None = "RGB",
                    video_processor: str | None = None):
        from vllm import envs

        return self.load_from_url(video_url, self._video_io(), fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)

    async def fetch_video_async(self, video_url: str, *, image_mode: str | None = "RGB",
                                video_processor: str | None = None):
        from vllm import envs

        return await self.load_from_url_async(video_url, self._video_io(),
                                              fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)


def register() -> None:
    """Register the connector under ``qwen3vl`` (idempotent)."""
    if NAME not in getattr(MEDIA_CONNECTOR_REGISTRY, "name2class", {}):
        MEDIA_CONNECTOR_REGISTRY.register(NAME)(Qwen3VLMediaConnector)
