"""A vLLM video loader that decodes video files the way the reference does.

vLLM's own loaders (OpenCV by default) sample and size video files their own way, so a video
file sent to a server gives a different vector than the reference. The plugin registers this
loader under the name ``qwen3vl`` (vLLM's public ``VIDEO_LOADER_REGISTRY``) and selects it, for
detected checkpoints only, through ``media_io_kwargs``. It decodes with PyAV, samples frames as
qwen-vl-utils does (fps 1.0, at most 64 frames, at least 4), resizes the clip to the reference's
size and returns the frames with the metadata that gives the reference's timestamps. The HF
processor then sees frames already at their final size and leaves them as they are.

Frame lists (``data:video/jpeg;base64,<f1>,<f2>,...``) do not come here: the package's media
connector (``media_connector``) prepares them, and calls ``load_video_file`` for data URLs.
"""

from __future__ import annotations

from typing import Any

from vllm.multimodal.video import VideoLoader

from qwen3vl_vllm.media import budget as budgets
from qwen3vl_vllm.media.decode import DEFAULT_TOTAL_PIXELS, read_video_file, vllm_video_metadata
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS

NAME = "qwen3vl"


def load_video_file(data: bytes, *, fps: float, max_frames: int, budget=None, where: str = "video"):
    """Video file bytes -> (THWC frames, metadata) as the reference prepares them.

    The frames are uint8: the reference rounds its clip resize to uint8 before its ``.float()``,
    so uint8 holds the same values in a quarter of the bytes the processor copies and the engine
    is sent. Each frame is resized as it is decoded and paid for from ``budget`` (the request's,
    see ``budget``).
    """
    clip, meta, _ = read_video_file(data, where, fps=fps, max_frames=max_frames,
                                    total_pixels=DEFAULT_TOTAL_PIXELS,
                                    budget=budget if budget is not None else budgets.for_request())
    meta = {**meta, "video_backend": NAME}
    return clip.permute(0, 2, 3, 1).contiguous().numpy(), vllm_video_metadata(meta)


class Qwen3VLVideoLoader(VideoLoader):
    @classmethod
    def load_bytes(cls, data: bytes, num_frames: int = -1, qwen3vl_fps: float | None = None,
                   qwen3vl_max_frames: int | None = None, **kwargs: Any):
        fps = DEFAULT_SETTINGS.fps if qwen3vl_fps is None else float(qwen3vl_fps)
        max_frames = DEFAULT_SETTINGS.max_frames if qwen3vl_max_frames is None else int(qwen3vl_max_frames)
        return load_video_file(data, fps=fps, max_frames=max_frames)


def register() -> None:
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    if NAME not in VIDEO_LOADER_REGISTRY.name2class:
        VIDEO_LOADER_REGISTRY.register(NAME)(Qwen3VLVideoLoader)
