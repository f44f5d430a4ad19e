"""The transformers reference: the yardstick for parity tests and the benchmarks' baseline.

Written from SPEC §1-2, independent of vLLM. Prompts come from ``inputs`` (the one prompt
module) and are rendered with the *checkpoint's own* chat template; pixels come from
qwen-vl-utils itself (``process_vision_info`` with image_patch_size 16), so ``media`` is checked
against it rather than with it. Only video-file decoding is supplied here (PyAV), because
qwen-vl-utils' readers (torchvision/decord/torchcodec) do not work on these machines; frame
sampling stays qwen-vl-utils' own.

- Embedding: backbone ``last_hidden_state`` (after the final norm) at the last attended token,
  right padding, optional L2; MRL = first d components, then L2.
- Reranker: score = sigmoid(h . (W[yes] - W[no])), one pair per forward pass; over-long pairs
  keep special tokens in the body and re-append the 5-token suffix.

Example::

    ref = ReferenceEmbedder("/tmp/ckpt/Qwen3-VL-Embedding-tiny-random")
    vectors = ref.process([{"text": "a cat"}, {"image": "cat.png"}])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import inputs as I
from .media import decode_video

SUFFIX_TOKENS = 5  # <|im_end|> \n <|im_start|> assistant \n


def _install_pyav_reader() -> None:
    import torch
    from qwen_vl_utils import vision_process as vp

    if "pyav" in vp.VIDEO_READER_BACKENDS:
        return

    def read(ele: dict):
        frames, video_fps = decode_video(ele["video"], "video")
        total = len(frames)
        nframes = vp.smart_nframes(ele, total_frames=total, video_fps=video_fps)
        idx = torch.linspace(0, total - 1, nframes).round().long()
        import numpy as np

        video = torch.from_numpy(np.stack([frames[i] for i in idx.tolist()])).permute(0, 3, 1, 2)
        meta = dict(fps=video_fps, frames_indices=idx, total_num_frames=total, video_backend="pyav")
        return video, meta, nframes / max(total, 1e-6) * video_fps

    vp.VIDEO_READER_BACKENDS["pyav"] = read
    vp.FORCE_QWENVL_VIDEO_READER = "pyav"
    vp.get_video_reader_backend.cache_clear()


class _Base:
    def __init__(self, model_name_or_path: str, *, max_length: int, settings: I.MediaSettings,
                 dtype: str = "float32", device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        _install_pyav_reader()
        self.settings = settings
        self.max_length = max_length
        self.processor = AutoProcessor.from_pretrained(model_name_or_path, padding_side="right")
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(
            model_name_or_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device

    def _vision(self, conversations: list):
        from qwen_vl_utils import process_vision_info

        images, videos, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True)
        metadata = None
        if videos:
            videos, metadata = (list(x) for x in zip(*videos))
        return images, videos, metadata, video_kwargs

    def _encode(self, conversations: list, *, truncation: bool):
        text = self.processor.apply_chat_template(conversations, add_generation_prompt=True,
                                                  tokenize=False)
        images, videos, metadata, video_kwargs = self._vision(conversations)
        kwargs = dict(text=text, images=images, videos=videos, padding=True, do_resize=False,
                      return_tensors="pt", **video_kwargs)
        if metadata is not None:
            kwargs["video_metadata"] = metadata
        if truncation:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(**kwargs)


class ReferenceEmbedder(_Base):
    """Qwen3-VL-Embedding in plain transformers, batched like upstream."""

    def __init__(self, model_name_or_path: str, *, max_length: int = I.EMBED_MAX_LENGTH,
                 settings: I.MediaSettings = I.DEFAULT_SETTINGS, **kw: Any):
        super().__init__(model_name_or_path, max_length=max_length, settings=settings, **kw)

    def conversations(self, inputs: Sequence[Mapping[str, Any]]) -> list:
        return [I.embedding_conversation(item, index=i, settings=self.settings)
                for i, item in enumerate(inputs)]

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
                mask = batch["attention_mask"]
                last = mask.sum(dim=1) - 1  # right padding
                vec = hidden[torch.arange(hidden.shape[0]), last].float()
                out.append(vec)
        vectors = torch.cat(out) if out else torch.zeros((0, self.model.config.text_config.hidden_size))
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu().numpy().astype(np.float32)


class ReferenceReranker(_Base):
    """Qwen3-VL-Reranker in plain transformers: one pair per forward pass, like upstream."""

    def __init__(self, model_name_or_path: str, *, max_length: int = I.RERANK_MAX_LENGTH,
                 settings: I.MediaSettings = I.DEFAULT_SETTINGS, **kw: Any):
        super().__init__(model_name_or_path, max_length=max_length, settings=settings, **kw)
        tok = self.processor.tokenizer
        yes = tok.convert_tokens_to_ids("yes")
        no = tok.convert_tokens_to_ids("no")
        weight = self.model.lm_head.weight
        self.score_vector = (weight[yes] - weight[no]).detach().float()

    def _truncate(self, batch):
        """Cut the body (all but the 5-token suffix) keeping special tokens, then re-append."""
        import torch

        ids = batch["input_ids"][0]
        n = ids.shape[0]
        if n <= self.max_length:
            return batch
        special = set(self.processor.tokenizer.all_special_ids)
        body = ids[:-SUFFIX_TOKENS].tolist()
        n_special = sum(1 for t in body if t in special)
        keep_plain = max(0, self.max_length - SUFFIX_TOKENS - n_special)
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

        req = I.rerank_request(inputs, settings=self.settings)
        scores = []
        with torch.no_grad():
            for doc in req.documents:
                conv = I.rerank_conversation(req.instruction, req.query, doc)
                batch = self._truncate(self._encode([conv], truncation=False))
                hidden = self.model.model(**batch).last_hidden_state[0, -1].float()
                scores.append(float(torch.sigmoid(hidden @ self.score_vector)))
        return scores
