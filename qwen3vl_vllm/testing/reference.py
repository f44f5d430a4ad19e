"""The transformers reference: the yardstick for parity tests and the benchmarks' baseline.

A second, separate reading of SPEC §1-2 and of upstream QwenLM/Qwen3-VL-Embedding
(``src/models/qwen3_vl_embedding.py`` / ``qwen3_vl_reranker.py``). It imports nothing from the
package modules it is used to check (``inputs``, ``media``, ``client``, ``plugin``,
``offline``): conversations, the instruction and "NULL" rules, frame sampling and the chat
template are written here again, so a bug in shared code cannot hide from a parity test.
qwen-vl-utils (``process_vision_info``, image_patch_size 16) and transformers are its engine.
Only video-file decoding is supplied here (PyAV), because qwen-vl-utils' own readers
(torchvision/decord/torchcodec) do not work on these machines; its frame *sampling*
(``smart_nframes``, ``linspace(...).round()``) is kept.

Beyond upstream, sources upstream would refuse are accepted so the same cases can be checked
on every path: ``data:`` URLs are passed to qwen-vl-utils as they are (upstream would prefix
``file://``), raw bytes and numpy arrays become PIL images, and a video file may be a
``data:video/...`` URL.

- Embedding: backbone ``last_hidden_state`` (after the final norm) at the last attended token,
  right padding, optional L2; MRL = first d components, then L2.
- Reranker: score = sigmoid(h . (W[yes] - W[no])), one pair per forward pass; over-long pairs
  keep special tokens in the body and re-append the 5-token suffix.

Example::

    ref = ReferenceEmbedder("/tmp/ckpt/Qwen3-VL-Embedding-tiny-random")
    vectors = ref.process([{"text": "a cat"}, {"image": "cat.png"}])
"""

from __future__ import annotations

import base64
import io
import os
import unicodedata
from typing import Any, Mapping, Sequence

# Upstream constants (qwen3_vl_embedding.py / qwen3_vl_reranker.py)
_FACTOR = 32
MIN_PIXELS = 4 * _FACTOR * _FACTOR
MAX_PIXELS = 1800 * _FACTOR * _FACTOR
TOTAL_PIXELS = 10 * 768 * _FACTOR * _FACTOR
FPS = 1.0
MAX_FRAMES = 64
EMBED_MAX_LENGTH = 8192
RERANK_MAX_LENGTH = 10240
EMBED_INSTRUCTION = "Represent the user's input."
RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
RERANK_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the '
                 'Instruct provided. Note that the answer can only be "yes" or "no".')
SUFFIX_TOKENS = 5  # <|im_end|> \n <|im_start|> assistant \n
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg"}

# The Qwen3-VL chat template, reduced to what these prompts use (written for the reference; the
# package's own templates are not read): a system turn, user turns of text/image/video parts,
# and the generation prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# ------------------------------------------------------------------ conversations (upstream rules)


def _is_image_path(path: str) -> bool:
    from urllib.parse import urlparse

    clean = urlparse(path).path if path.startswith(("http://", "https://")) else path
    return os.path.splitext(clean.lower())[1] in _IMAGE_EXTS


def _is_one_video(video: Any) -> bool:
    """Upstream ``is_video_input``, widened to frames given as bytes/arrays/data URLs."""
    if isinstance(video, (str, os.PathLike)):
        return True
    if isinstance(video, (list, tuple)) and video:
        first = video[0]
        if isinstance(first, (str, os.PathLike)):
            first = os.fspath(first)
            return _is_image_path(first) or first.startswith("data:image")
        return not isinstance(first, (list, tuple))
    return False


def sample_frames(frames: list, max_segments: int) -> list:
    """Upstream ``sample_frames``: a short list as given, a longer one by numpy linspace."""
    import numpy as np

    if len(frames) <= max_segments:
        return list(frames)
    return [frames[i] for i in np.linspace(0, len(frames) - 1, max_segments, dtype=int).tolist()]


def _as_pil(value: Any):
    from PIL import Image

    if isinstance(value, (bytes, bytearray)):
        img = Image.open(io.BytesIO(bytes(value)))
        img.load()
        return img
    if hasattr(value, "ndim") and hasattr(value, "dtype"):
        return Image.fromarray(value)
    return value


def _image_source(value: Any):
    value = _as_pil(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and not value.startswith(("http://", "https://", "data:", "file://")):
        return "file://" + value
    return value


def _video_source(value: Any) -> str:
    value = os.fspath(value)
    return value if value.startswith(("http://", "https://", "data:", "file://")) else "file://" + value


def _listify(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def mm_content(obj: Mapping[str, Any], *, fps: float | None, max_frames: int | None,
               frame_limit: int = MAX_FRAMES) -> list[dict]:
    """Upstream's content parts for one side: videos, images, texts; NULL when none."""
    texts = _listify(obj.get("text"))
    images = _listify(obj.get("image"))
    video = obj.get("video")
    videos = [] if video is None else ([video] if _is_one_video(video) else list(video))
    if not texts and not images and not videos:
        return [{"type": "text", "text": "NULL"}]
    content = []
    for vid in videos:
        if isinstance(vid, (list, tuple)):
            frames = sample_frames(list(vid), frame_limit)
            content.append({"type": "video", "video": [_image_source(f) for f in frames],
                            "total_pixels": TOTAL_PIXELS})
        else:
            content.append({"type": "video", "video": _video_source(vid),
                            "fps": fps or FPS, "max_frames": max_frames or MAX_FRAMES})
    for img in images:
        content.append({"type": "image", "image": _image_source(img), "min_pixels": MIN_PIXELS,
                        "max_pixels": MAX_PIXELS})
    for txt in texts:
        content.append({"type": "text", "text": txt})
    return content


def embedding_conversation(item: Mapping[str, Any]) -> list[dict]:
    """Upstream ``format_model_input``."""
    instruction = item.get("instruction")
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction or EMBED_INSTRUCTION}]},
        {"role": "user", "content": mm_content(item, fps=item.get("fps"),
                                               max_frames=item.get("max_frames"))},
    ]


def rerank_conversation(instruction: str | None, query: Mapping[str, Any],
                        document: Mapping[str, Any], *, fps: float | None = None,
                        max_frames: int | None = None) -> list[dict]:
    """Upstream ``format_mm_instruction``: the instruction, then "<Query>:" and
    "\\n<Document>:" each followed by that side's parts (no punctuation rule)."""
    content = [{"type": "text", "text": "<Instruct>: " + (instruction or RERANK_INSTRUCTION)},
               {"type": "text", "text": "<Query>:"}]
    content += mm_content(query, fps=fps, max_frames=max_frames)
    content.append({"type": "text", "text": "\n<Document>:"})
    content += mm_content(document, fps=fps, max_frames=max_frames)
    return [{"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
            {"role": "user", "content": content}]


# ------------------------------------------------------------------ video files via PyAV


def _video_bytes(src: str) -> bytes:
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    if src.startswith("file://"):
        src = src[7:]
    with open(src, "rb") as f:
        return f.read()


def _install_pyav_reader() -> None:
    """qwen-vl-utils' torchvision reader, with PyAV decoding (the sampling stays its own)."""
    import av
    import numpy as np
    import torch
    from qwen_vl_utils import vision_process as vp

    if "pyav" in vp.VIDEO_READER_BACKENDS:
        return

    def read(ele: dict):
        data = _video_bytes(ele["video"])
        with av.open(io.BytesIO(data)) as container:  # pass 1: count the decodable frames
            stream = container.streams.video[0]
            # decord's average fps; a stream too short to have one (a 2-frame MPEG-TS) gets
            # ffmpeg's guessed rate, else 1.0 (decord would give NaN, which upstream cannot use)
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else 1.0
            total = sum(1 for _ in container.decode(stream))
        nframes = vp.smart_nframes(ele, total_frames=total, video_fps=video_fps)
        idx = torch.linspace(0, total - 1, nframes).round().long()
        wanted, kept = set(idx.tolist()), {}
        with av.open(io.BytesIO(data)) as container:  # pass 2: keep only the sampled frames
            for i, f in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    kept[i] = f.to_ndarray(format="rgb24")
        video = torch.from_numpy(np.stack([kept[i] for i in idx.tolist()])).permute(0, 3, 1, 2)
        meta = dict(fps=video_fps, frames_indices=idx, total_num_frames=total, video_backend="pyav")
        return video, meta, nframes / max(total, 1e-6) * video_fps

    vp.VIDEO_READER_BACKENDS["pyav"] = read
    vp.FORCE_QWENVL_VIDEO_READER = "pyav"
    vp.get_video_reader_backend.cache_clear()


# ------------------------------------------------------------------ models


class _Base:
    def __init__(self, model_name_or_path: str, *, max_length: int, dtype: str = "float32",
                 device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        _install_pyav_reader()
        self.max_length = max_length
        self.processor = AutoProcessor.from_pretrained(model_name_or_path, padding_side="right")
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(
            model_name_or_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device

    def render(self, conversations: list) -> list[str]:
        return self.processor.apply_chat_template(conversations, chat_template=CHAT_TEMPLATE,
                                                  add_generation_prompt=True, tokenize=False)

    def _encode(self, conversations: list, *, truncation: bool):
        from qwen_vl_utils import process_vision_info

        text = self.render(conversations)
        images, videos, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True)
        kwargs = dict(text=text, images=images, padding=True, do_resize=False,
                      return_tensors="pt", **video_kwargs)
        if videos:
            frames, metadata = (list(x) for x in zip(*videos))
            kwargs.update(videos=frames, video_metadata=metadata)
        if truncation:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(**kwargs)


class ReferenceEmbedder(_Base):
    """Qwen3-VL-Embedding in plain transformers, batched like upstream."""

    def __init__(self, model_name_or_path: str, *, max_length: int = EMBED_MAX_LENGTH, **kw: Any):
        super().__init__(model_name_or_path, max_length=max_length, **kw)

    def conversations(self, inputs: Sequence[Mapping[str, Any]]) -> list:
        return [embedding_conversation(item) for item in inputs]

    def process(self, inputs: Sequence[Mapping[str, Any]], normalize: bool = True,
                dimensions: int | None = None, batch_size: int | None = None):
        import numpy as np
        import torch

        convs = self.conversations(inputs)
        step = batch_size or max(1, len(convs))
        out = []
        with torch.no_grad():
            for start in range(0, len(convs), step):
                batch = self._encode(convs[start:start + step], truncation=True).to(self.device)
                hidden = self.model.model(**batch).last_hidden_state
                last = batch["attention_mask"].sum(dim=1) - 1  # right padding
                out.append(hidden[torch.arange(hidden.shape[0]), last].float())
        vectors = torch.cat(out) if out else torch.zeros((0, self.model.config.text_config.hidden_size))
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu().numpy().astype(np.float32)


class ReferenceReranker(_Base):
    """Qwen3-VL-Reranker in plain transformers: one pair per forward pass, like upstream."""

    def __init__(self, model_name_or_path: str, *, max_length: int = RERANK_MAX_LENGTH, **kw: Any):
        super().__init__(model_name_or_path, max_length=max_length, **kw)
        tok = self.processor.tokenizer
        weight = self.model.lm_head.weight
        yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        self.score_vector = (weight[yes] - weight[no]).detach().float()

    def pairs(self, inputs: Mapping[str, Any]) -> list:
        """One conversation per document (upstream ``process``, minus its silent empty
        result: an empty query or document list is a ValueError here)."""
        query, documents = inputs.get("query") or {}, inputs.get("documents") or []
        if not query or not documents:
            raise ValueError("the reference scores nothing for an empty query or document list")
        return [rerank_conversation(inputs.get("instruction"), query, doc, fps=inputs.get("fps"),
                                    max_frames=inputs.get("max_frames")) for doc in documents]

    def _truncate(self, batch):
        """Upstream ``tokenize``: the body (all but the 5-token suffix) is cut to ``max_length``
        tokens when it is longer, keeping every special token and the first plain tokens that
        still fit; then the suffix is put back (so a cut pair is ``max_length + 5`` long)."""
        import torch

        ids = batch["input_ids"][0]
        n = ids.shape[0]
        body = ids[:-SUFFIX_TOKENS].tolist()
        if len(body) <= self.max_length:
            return batch
        special = set(self.processor.tokenizer.all_special_ids)
        keep_plain = self.max_length - sum(1 for t in body if t in special)
        positions = []
        for pos, t in enumerate(body):
            if t in special:
                positions.append(pos)
            elif keep_plain > 0:
                positions.append(pos)
                keep_plain -= 1
        positions += list(range(n - SUFFIX_TOKENS, n))
        index = torch.tensor(positions)
        for key, value in list(batch.items()):  # every per-token tensor (ids, mask, token types)
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == n:
                batch[key] = value[:, index]
        return batch

    def process(self, inputs: Mapping[str, Any]) -> list[float]:
        import torch

        scores = []
        with torch.no_grad():
            for conv in self.pairs(inputs):
                batch = self._truncate(self._encode([conv], truncation=False))
                hidden = self.model.model(**batch).last_hidden_state[0, -1].float()
                scores.append(float(torch.sigmoid(hidden @ self.score_vector)))
        return scores
