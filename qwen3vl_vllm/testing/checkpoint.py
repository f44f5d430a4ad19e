"""Build random Qwen3-VL checkpoints, tokenizer included, with no download.

Tests and the demo need a real Qwen3-VL checkpoint (same architecture, processors, tokenizer
and chat format as Qwen3-VL-Embedding/Reranker) but no hub is reachable. ``build_checkpoint``
writes one from a seed:

- ``tiny``: hidden 64, 2 layers, vision depth 2 -- seconds to build, for tests and the demo;
- ``2b``: the real 2B shape (SPEC §3) in bf16 -- for throughput benchmarks.

Weights are drawn with std 0.1 for ``tiny`` (the HF default 0.02 makes every output of a 2-layer
model alike) and 0.02 for ``2b`` (at 0.1, 28 layers of width 2,048 blow the residual stream up
until bf16 rounding decides the output, so no two bf16 implementations agree). The tokenizer is a
byte-level BPE trained here on a fixed corpus, with the Qwen special tokens and ``yes``/``no``
as single tokens. The kind (embedding/reranker) is marked twice, as the real checkpoints do it by
name: the directory name contains ``Qwen3-VL-Embedding``/``Qwen3-VL-Reranker`` and config.json
carries ``"qwen3vl_vllm_kind"``.

Example::

    qwen3vl-vllm make-checkpoint /tmp/ckpt/Qwen3-VL-Embedding-tiny --kind embedding --size tiny
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from qwen3vl_vllm.serving.detect import KIND_FIELD  # the config field detection reads

KINDS = ("embedding", "reranker", "instruct")
SIZES = ("tiny", "2b")

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
EXTRA_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]

# The Qwen2 pre-tokenizer split pattern.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_WORDS = (
    "yes no system user assistant represent the user's input given a search query retrieve relevant "
    "candidates that answer judge whether document meets requirements based on and instruct "
    "provided note can only be image video text picture frame seconds of in to is are was were "
    "cat dog beach sunset woman playing with her red blue green photo chart table page screenshot "
    "retrieval embedding reranker model vector score similar different hello world test one two three"
).split()

SHAPES = {
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, vocab_size=2048, mrope_section=[6, 5, 5]),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                    deepstack_visual_indexes=[1], num_position_embeddings=2304),
        tie=False, dtype="float32", std=0.1,
    ),
    "2b": dict(
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, mrope_section=[24, 20, 20]),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                    deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304),
        tie=True, dtype="bfloat16", std=0.02,
    ),
}


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(3, 12)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 999)))
        out.append(" ".join(words) + rng.choice([".", "?", "!", ",", ":", ""]))
    # Words must exist on their own too, so "yes"/"no" become single tokens.
    out.extend(_WORDS * 20)
    return out


def build_tokenizer(out_dir: Path, seed: int = 0, vocab_size: int = 1800):
    """Train a Qwen-style byte-level BPE tokenizer locally and save it to ``out_dir``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False, model_max_length=262144,
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    fast.add_tokens(EXTRA_TOKENS)
    for word in ("yes", "no"):
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer build: {word!r} is not one token ({ids})")
    return fast


def _template() -> str:
    from qwen3vl_vllm.prompts.engine import TEMPLATES  # the instruct model's own chat template

    return (TEMPLATES / "qwen3vl_chat.jinja").read_text()


def build_checkpoint(out_dir: str | Path, *, kind: str = "embedding", size: str = "tiny",
                     seed: int = 0, std: float | None = None) -> Path:
    """Write a random Qwen3-VL checkpoint of ``kind``/``size`` to ``out_dir`` and return its path."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[size]
    std = shape["std"] if std is None else std
    tokenizer = build_tokenizer(out, seed=seed)
    tokenizer.chat_template = _template()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(shape["text"])
    mrope = text.pop("mrope_section")
    if len(tokenizer) > text["vocab_size"]:
        raise RuntimeError("tokenizer larger than the model vocabulary")
    config = Qwen3VLConfig(
        text_config=dict(
            **text, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                             "mrope_section": mrope, "mrope_interleaved": True},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=shape["tie"],
        ),
        vision_config=dict(
            **shape["vision"], hidden_act="gelu_pytorch_tanh", in_channels=3, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text["hidden_size"],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape["tie"],
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    torch.manual_seed(seed)
    dtype = getattr(torch, shape["dtype"])
    with torch.device("cpu"):
        model = Qwen3VLForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model = model.to(dtype)
    model.config.dtype = shape["dtype"]
    setattr(model.config, KIND_FIELD, kind)
    model.save_pretrained(out, safe_serialization=True)

    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 4096, "longest_edge": 1310720}, patch_size=16,
        temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16,
        temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        fps=2, min_frames=4, max_frames=768,
    )
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=_template())
    processor.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[KIND_FIELD] = kind
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def default_name(kind: str, size: str) -> str:
    """Directory name that marks the kind the way the real checkpoints' names do."""
    label = {"embedding": "Qwen3-VL-Embedding", "reranker": "Qwen3-VL-Reranker",
             "instruct": "Qwen3-VL-Instruct"}[kind]
    return f"{label}-{size}-random"


def ensure_checkpoint(root: str | Path, *, kind: str, size: str = "tiny", seed: int = 0) -> Path:
    """Build the checkpoint under ``root`` unless a complete one is already there."""
    path = Path(root) / default_name(kind, size)
    marker = path / ".complete"
    stamp = f"{kind} {size} {seed} std={SHAPES[size]['std']}"
    if marker.exists() and marker.read_text() == stamp:
        return path
    build_checkpoint(path, kind=kind, size=size, seed=seed)
    marker.write_text(stamp)
    return path
