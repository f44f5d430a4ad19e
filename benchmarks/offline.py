"""Offline throughput: the transformers reference vs the project's offline API on vLLM, same
inputs, dtype and machine, in one run. Parity is checked before anything is timed."""

from __future__ import annotations

import gc
import time

import numpy as np

from workloads import count_images

PARITY = {"float32": (0.9999, 1e-4), "bfloat16": (0.999, 2e-2)}


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rates(seconds: float, n: int, tokens: int, images: int, unit: str) -> dict:
    out = {"seconds": seconds, unit: n / seconds, "tokens_per_s": tokens / seconds}
    if images:  # a text-only workload has no images/s figure
        out["images_per_s"] = images / seconds
    return out


def _ref_tokens(ref, convs) -> int:
    batch = ref._encode(convs, truncation=False)
    return int(batch["attention_mask"].sum())


def embedding(ckpt: str, workloads: dict[str, list], *, dtype: str, repeats: int,
              engine_kwargs: dict) -> list[dict]:
    """One reference model and one engine for several workloads (engine start-up is slow)."""
    from qwen3vl_vllm.offline import Qwen3VLEmbedder
    from qwen3vl_vllm.reference import ReferenceEmbedder

    cos_min, _ = PARITY[dtype]
    ref = ReferenceEmbedder(ckpt, dtype=dtype)
    refs = {}
    for name, inputs in workloads.items():
        tokens = _ref_tokens(ref, ref.conversations(inputs))
        ref.process(inputs[:2])  # warm-up
        t_ref, vecs = _timed(lambda: ref.process(inputs), repeats)
        refs[name] = (tokens, t_ref, vecs)
    del ref
    gc.collect()
    results = []
    with Qwen3VLEmbedder(ckpt, dtype=dtype, **engine_kwargs) as model:
        for name, inputs in workloads.items():
            tokens, t_ref, ref_vecs = refs[name]
            got = model.process(inputs)  # warm-up, and the parity check before timing
            cos = (got * ref_vecs).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref_vecs, axis=1))
            base = {"workload": name, "dtype": dtype, "parity_min_cosine": float(cos.min())}
            if cos.min() < cos_min:
                results.append({**base, "parity": False})
                continue
            t_vllm, _ = _timed(lambda: model.process(inputs), repeats)
            n, imgs = len(inputs), count_images("embedding", inputs)
            results.append({
                **base, "parity": True, "items": n, "images": imgs, "prompt_tokens": tokens,
                "reference": _rates(t_ref, n, tokens, imgs, "items_per_s"),
                "vllm": _rates(t_vllm, n, tokens, imgs, "items_per_s"),
                "ratio_vllm_over_reference": t_ref / t_vllm,
            })
    return results


def reranker(ckpt: str, inputs: dict, *, dtype: str, repeats: int, engine_kwargs: dict) -> dict:
    from qwen3vl_vllm import inputs as I
    from qwen3vl_vllm.offline import Qwen3VLReranker
    from qwen3vl_vllm.reference import ReferenceReranker

    _, max_diff = PARITY[dtype]
    ref = ReferenceReranker(ckpt, dtype=dtype)
    req = I.rerank_request(inputs)
    tokens = sum(_ref_tokens(ref, [I.rerank_conversation(req.instruction, req.query, d)])
                 for d in req.documents)
    ref.process({"query": inputs["query"], "documents": inputs["documents"][:1]})  # warm-up
    t_ref, ref_scores = _timed(lambda: ref.process(inputs), repeats)  # one pair per forward
    del ref
    gc.collect()
    with Qwen3VLReranker(ckpt, dtype=dtype, **engine_kwargs) as model:
        got = model.process(inputs)
        diff = float(np.max(np.abs(np.asarray(got) - np.asarray(ref_scores))))
        if diff > max_diff:
            return {"parity": False, "parity_max_abs_diff": diff, "dtype": dtype}
        t_vllm, _ = _timed(lambda: model.process(inputs), repeats)
    n, imgs = len(inputs["documents"]), count_images("reranker", inputs)
    return {
        "parity": True, "dtype": dtype, "parity_max_abs_diff": diff, "pairs": n, "images": imgs, "prompt_tokens": tokens,
        "reference": _rates(t_ref, n, tokens, imgs, "pairs_per_s"),
        "vllm": _rates(t_vllm, n, tokens, imgs, "pairs_per_s"),
        "ratio_vllm_over_reference": t_ref / t_vllm,
    }


def matmul_peak(dtype: str, n: int = 2048, seconds: float = 3.0) -> float:
    """This machine's dense matmul rate (GFLOP/s) in ``dtype``, all threads torch uses."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    for _ in range(2):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0) / 1e9


def text_flops_per_token(ckpt: str) -> float:
    """2 x the language model's non-embedding parameters (dense forward, short prompts)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(ckpt) / "config.json").read_text())["text_config"]
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * inter
    return 2.0 * layers * (attn + mlp)
