"""A vLLM media connector that prepares every image and frame exactly as the reference does.

Why: a plain HTTP client (curl, JavaScript, Go, the openai SDK) sends the *original* image or
frames. vLLM's own connector converts alpha modes its own way (it composites LA and palette
transparency on white, applies EXIF rotation), and leaves sizing to the HF processor, which
resizes with torchvision rather than PIL bicubic and reads frame lists with its own sampling.
Each of those gives a different vector than the reference (SPEC §1).

The plugin registers this connector under the name ``qwen3vl`` (vLLM's public
``MEDIA_CONNECTOR_REGISTRY``) and selects it through ``VLLM_MEDIA_CONNECTOR`` in the API server
of a detected checkpoint only. Where media may come from (``server_media_policy``):

- data URLs always;
- http(s) URLs only when enabled (``QWEN3VL_REMOTE_MEDIA=1``, or ``--allowed-media-domains``,
  which then lists the only hosts allowed), and then through the package's own fetch
  (``sources``/``fetch``): public addresses only, the checked address connected to, every
  redirect re-checked, one deadline (vLLM's ``VLLM_*_FETCH_TIMEOUT``) and vLLM's size cap
  (``VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB``) for the whole download;
- ``file://`` only inside ``--allowed-local-media-path``: regular files, size checked before
  reading, the folder checked on the opened file.

Every decoded pixel is paid for from the request's ``budget.DecodeBudget``. Decoding and sizing:

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

import asyncio
import contextlib
import io
import os
from pathlib import Path
from typing import Any

import pybase64
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.base import MediaIO, MediaWithBytes

from qwen3vl_vllm.media import budget as budgets
from qwen3vl_vllm.media import decode as media
from qwen3vl_vllm.serving.video_loader import load_video_file
from qwen3vl_vllm.errors import InputError, MediaError
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS, sample_frame_list, video_setting
from qwen3vl_vllm.serving.settings import REMOTE_MEDIA_ENV, MEDIA_ORIGINS_ENV, REMOTE_OFF_DOMAIN
from qwen3vl_vllm.serving.error_naming import item_key, payload_key
from qwen3vl_vllm.media.sources import MediaPolicy, read_local_file, source_bytes

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


def _open_image(data: bytes, where: str, budget: budgets.DecodeBudget | None = None):
    """Decode as ``media.load_image`` does (the reference's RGB rule), with vLLM's opener."""
    return media.load_image(data, where, opener=_vllm_open, budget=budget)


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
        try:  # the item's own rule (inputs.video_setting): 0 is the default, nan is refused
            number = video_setting(f"data URL parameter {key}", number, kind, minimum)
        except InputError as e:
            raise MediaError(where, f"{e.problem} ({key}={value})", e.fix) from None
        if number is not None:
            out[key] = number
    return base.lower(), out


def _b64decode(data: str) -> bytes:
    try:
        return pybase64.b64decode(data, validate=True)
    except ValueError:
        raise MediaError("data URL", "the payload is not valid base64",
                         "Use data:<mime>;base64,<payload>") from None


@contextlib.contextmanager
def _tagged(payload: str, key: str | None = None):
    """Tag a media error with the item's key (``item#<key>``: of a data URL's payload, or of a
    URL): the server's error middleware then names the item (``messages[1].content[0]``)
    without decoding it again."""
    try:
        yield
    except MediaError as e:
        where = e.where if e.where.startswith("video.frames") else ""
        label = f"item#{key or payload_key(payload)}" + (where[5:] if where else "")
        raise type(e)(label, e.problem, e.fix) from None


class _Budgeted(MediaIO):
    """A media IO that pays for what it decodes from the request's budget. ``count`` is False
    for a payload this request already paid for (vLLM decodes a reranking query once per
    document): the copy is still held, so it still takes from the process pool."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = budgets.for_request()
        self.count = True

    def _budget(self):
        return self.budget if self.count else _Uncounted(self.budget)


class _Uncounted:
    """A budget view whose decoded bytes do not count for the request again."""

    def __init__(self, budget: budgets.DecodeBudget):
        self._b = budget

    def charge(self, n: int, where: str, *, count: bool = True) -> None:
        self._b.charge(n, where, count=False)

    def __getattr__(self, name: str):
        return getattr(self._b, name)


class ReferenceImageIO(_Budgeted):
    """Images as qwen-vl-utils' ``fetch_image`` prepares them (RGB rule, PIL bicubic resize)."""

    def __init__(self, *, min_pixels: float, max_pixels: float) -> None:
        super().__init__()
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        image = media.prepare_image(data, "image", opener=_vllm_open, budget=self._budget(),
                                    min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        config = {"qwen3vl": "reference", "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return MediaWithBytes(image, data, config)

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        with _tagged(data):
            return self.load_bytes(_b64decode(data))

    def load_file(self, filepath: Path) -> MediaWithBytes:  # pragma: no cover - the connector reads files
        raise MediaError("image", "local files are read by the connector", "")

    def encode_base64(self, media_obj: Any) -> str:  # pragma: no cover - not used for input
        return pybase64.b64encode(media.encode_png(media_obj)).decode()


def frame_list_video(payloads: list[str], *, max_frames: int, total_pixels: float,
                     budget=None, where: str = "video"):
    """Base64 frames -> (uint8 THWC frames, metadata) as the reference prepares a frame list.
    Sampled first, as upstream does: frames it would not keep are never decoded, and the kept
    ones are decoded one at a time (``media.frame_list_clip``)."""
    keep = sample_frame_list(list(range(len(payloads))), max_frames)
    frame_budget = budget
    if budget is not None:
        # every kept frame's header first: the whole list is paid for (or refused) before a
        # single pixel is decoded; the frames then only take their turn in the process pool
        total = 0
        for k in keep:
            try:
                with _vllm_open(io.BytesIO(_b64decode(payloads[k]))) as header:
                    total += budgets.image_bytes(header.mode, *header.size)
            except MediaError:
                raise
            except Exception:  # noqa: BLE001 - not an image: decoding it names the problem
                continue
        budget.charge(total, f"{where}.frames")
        frame_budget = _Uncounted(budget)
    clip, meta = media.frame_list_clip(
        keep, where, total_pixels=total_pixels, budget=frame_budget, numbers=keep,
        load=lambda k, at: _open_image(_b64decode(payloads[k]), at, frame_budget))
    return clip.permute(0, 2, 3, 1).contiguous().numpy(), media.vllm_video_metadata(meta)


class ReferenceVideoIO(_Budgeted):
    """Frame lists and video files as the reference prepares them."""

    def __init__(self, *, fps: float, max_frames: int, frame_list_max_frames: int,
                 total_pixels: float) -> None:
        super().__init__()
        self.fps, self.max_frames = fps, max_frames
        self.frame_list_max_frames, self.total_pixels = frame_list_max_frames, total_pixels

    def _file(self, data: bytes, fps: float, max_frames: int, tag: bytes = b"") -> MediaWithBytes:
        frames, meta = load_video_file(data, fps=fps, max_frames=max_frames, budget=self._budget())
        return MediaWithBytes((frames, meta), tag + data)

    def load_bytes(self, data: bytes) -> MediaWithBytes:
        return self._file(data, self.fps, self.max_frames)

    def load_file(self, filepath: Path) -> MediaWithBytes:  # pragma: no cover - the connector reads files
        raise MediaError("video", "local files are read by the connector", "")

    def load_base64(self, media_type: str, data: str) -> MediaWithBytes:
        with _tagged(data):
            base, params = _params(media_type, "video")
            if base in FRAME_LIST_TYPES:
                video = frame_list_video(data.split(","), max_frames=self.frame_list_max_frames,
                                         total_pixels=self.total_pixels, budget=self._budget())
                return MediaWithBytes(video, data.encode())
            fps, max_frames = params.get("fps", self.fps), params.get("max_frames", self.max_frames)
            tag = f"fps={fps};max_frames={max_frames};".encode()  # settings join the cache key
            return self._file(_b64decode(data), fps, max_frames, tag)

    def encode_base64(self, media_obj: Any) -> str:  # pragma: no cover - not used for input
        raise NotImplementedError


def remote_fetch_enabled(allowed_domains: list[str] | None, environ: Any = None) -> bool:
    """Server-side URL fetches are off unless ``QWEN3VL_REMOTE_MEDIA=1`` or vLLM's
    ``--allowed-media-domains`` names real hosts (the launcher's ``remote-fetch-is-off.invalid``
    is no host)."""
    env = os.environ if environ is None else environ
    if env.get(REMOTE_MEDIA_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return any(d and d != REMOTE_OFF_DOMAIN for d in allowed_domains or [])


def server_media_policy(allowed_domains: list[str] | None, *, timeout: float, max_bytes: int,
                        environ: Any = None) -> MediaPolicy:
    """The policy of server-side fetches (``sources.MediaPolicy``): no local files (``file://``
    is read by the connector itself, inside the allowed folder), URLs only when enabled, only to
    the allowed domains when listed, never to private addresses except the exact origins in
    ``QWEN3VL_MEDIA_ALLOWED_ORIGINS``."""
    env = os.environ if environ is None else environ
    domains = tuple(d for d in allowed_domains or [] if d and d != REMOTE_OFF_DOMAIN)
    origins = tuple(o.strip() for o in env.get(MEDIA_ORIGINS_ENV, "").split(",") if o.strip())
    return MediaPolicy(allow_local_files=False, allow_remote=remote_fetch_enabled(allowed_domains, env),
                       url_timeout=float(timeout), max_bytes=int(max_bytes),
                       allowed_domains=domains, allowed_origins=origins)


REMOTE_OFF_MESSAGE = (f"this server does not fetch media URLs ({REMOTE_OFF_DOMAIN}: off by default). "
                      f"Send the item as a data URL, or start the server with {REMOTE_MEDIA_ENV}=1 "
                      "or --allowed-media-domains (YAML: media.remote_fetch: true)")


class Qwen3VLMediaConnector(MediaConnector):
    """vLLM's connector with reference decoding and sizing, the request's decode budget, and
    the package's media policy (see the module docstring)."""

    def _reference_image_io(self) -> ReferenceImageIO:
        kw = self.media_io_kwargs.get("image", {})
        return ReferenceImageIO(min_pixels=kw.get("qwen3vl_min_pixels", DEFAULT_SETTINGS.min_pixels),
                                max_pixels=kw.get("qwen3vl_max_pixels", DEFAULT_SETTINGS.max_pixels))

    def _reference_video_io(self) -> ReferenceVideoIO:
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

    def _load_file_url(self, url_spec: Any, media_io: MediaIO):
        from urllib.request import url2pathname

        root = self.allowed_local_media_path
        if root is None:
            raise RuntimeError("Cannot load local files without `--allowed-local-media-path`.")
        path = Path(url2pathname((url_spec.netloc or "") + (url_spec.path or "")))
        if root not in path.resolve().parents:
            raise ValueError(f"The file path {path} must be a subpath of "
                             f"`--allowed-local-media-path {root}`.")
        data = read_local_file(str(path), str(path), root=str(root), max_bytes=self._max_bytes(media_io))
        return media_io.load_bytes(data)

    @staticmethod
    def _max_bytes(media_io: MediaIO) -> int:
        from vllm import envs

        return int(media_io.get_max_bytes() or envs.VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB * 1024 * 1024)

    def load_from_url(self, url: str, media_io: MediaIO, *, fetch_timeout: int | None = None):
        from urllib3.util import parse_url

        if isinstance(media_io, _Budgeted):  # one payload object: charged to the request once
            media_io.count = media_io.budget.first_time(id(url))
        if url[:5].lower() == "data:":
            return self._load_data_url(url, media_io)
        spec = parse_url(url)
        if spec.scheme in ("http", "https"):
            policy = server_media_policy(self.allowed_media_domains, timeout=fetch_timeout or 10,
                                         max_bytes=self._max_bytes(media_io))
            if not policy.allow_remote:
                raise ValueError(f"{url}: {REMOTE_OFF_MESSAGE}")
            with _tagged(url, key=item_key(url)):
                return media_io.load_bytes(source_bytes(url, url, policy))
        if spec.scheme == "file":
            with _tagged(url, key=item_key(url)):
                return self._load_file_url(spec, media_io)
        raise ValueError("The URL must be either a HTTP, data or file URL.")

    async def load_from_url_async(self, url: str, media_io: MediaIO, *,
                                  fetch_timeout: int | None = None):
        # one code path: fetching, reading and decoding off the event loop
        return await asyncio.to_thread(self.load_from_url, url, media_io, fetch_timeout=fetch_timeout)

    def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB"):
        from vllm import envs

        return self.load_from_url(image_url, self._reference_image_io(),
                                  fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB"):
        from vllm import envs

        return await self.load_from_url_async(image_url, self._reference_image_io(),
                                              fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    def fetch_video(self, video_url: str, *, image_mode: str | None = "RGB",
                    video_processor: str | None = None):
        from vllm import envs

        return self.load_from_url(video_url, self._reference_video_io(),
                                  fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)

    async def fetch_video_async(self, video_url: str, *, image_mode: str | None = "RGB",
                                video_processor: str | None = None):
        from vllm import envs

        return await self.load_from_url_async(video_url, self._reference_video_io(),
                                              fetch_timeout=envs.VLLM_VIDEO_FETCH_TIMEOUT)


def register() -> None:
    """Register the connector under ``qwen3vl`` (idempotent)."""
    if NAME not in getattr(MEDIA_CONNECTOR_REGISTRY, "name2class", {}):
        MEDIA_CONNECTOR_REGISTRY.register(NAME)(Qwen3VLMediaConnector)
