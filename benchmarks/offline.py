"""Offline throughput: the transformers reference vs the project's offline API on vLLM, same
inputs, dtype and machine, in one run. Parity is checked before anything is timed, and every
timed set is new to both sides: vLLM caches prefixes and processed media, so timing a set it has
already seen measures its caches (7x faster on reranking here), not its throughput."""

from __future__ import annotations

import gc
import time

import numpy as np

from workloads import count_images

PARITY = {"float32": (0.9999, 1e-4), "bfloat16": (0.999, 2e-2)}


def _rates(seconds: float, n: int, tokens: int, images: int, unit: str) -> dict:
    out = {"seconds": seconds, unit: n / seconds, "tokens_per_s": tokens / seconds}
    if images:  # a text-only workload has no images/s figure
        out["images_per_s"] = images / seconds
    return out


def _ref_tokens(ref, convs) -> int:
    batch = ref._encode(convs, truncation=False)
    return int(batch["attention_mask"].sum())


def _cosines(a, b) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _clock(fn, sets: list) -> tuple[float, list]:
    """Total seconds over ``sets`` (each processed once) and the outputs."""
    outs, total = [], 0.0
    for x in sets:
        t0 = time.perf_counter()
        outs.append(fn(x))
        total += time.perf_counter() - t0
    return total, outs


def embedding(ckpt: str, workloads: dict[str, list[list]], *, dtype: str, engine_kwargs: dict) -> list[dict]:
    """``workloads``: name -> [parity set, timed set 1, ...], sets of the same shape.

    The parity set is checked first (and warms both sides up); each timed set is processed once
    by each side, so no timed call can be answered from vLLM's prefix or multimodal caches. One
    reference model and one engine serve all workloads (engine start-up is slow).
    """
    from qwen3vl_vllm.offline import Qwen3VLEmbedder
    from qwen3vl_vllm.reference import ReferenceEmbedder

    cos_min, _ = PARITY[dtype]
    ref = ReferenceEmbedder(ckpt, dtype=dtype)
    refs = {}
    for name, sets in workloads.items():
        parity_ref = ref.process(sets[0])
        tokens = sum(_ref_tokens(ref, ref.conversations(x)) for x in sets[1:])
        t_ref, ref_vecs = _clock(ref.process, sets[1:])
        refs[name] = (parity_ref, tokens, t_ref, ref_vecs)
    del ref
    gc.collect()
    results = []
    with Qwen3VLEmbedder(ckpt, dtype=dtype, **engine_kwargs) as model:
        for name, sets in workloads.items():
            parity_ref, tokens, t_ref, ref_vecs = refs[name]
            cos = _cosines(model.process(sets[0]), parity_ref)  # parity before timing
            base = {"workload": name, "dtype": dtype, "parity_min_cosine": float(cos.min())}
            if cos.min() < cos_min:
                results.append({**base, "parity": False})
                continue
            t_vllm, got = _clock(model.process, sets[1:])
            timed_cos = min(float(_cosines(g, r).min()) for g, r in zip(got, ref_vecs))
            n = sum(len(x) for x in sets[1:])
            imgs = sum(count_images("embedding", x) for x in sets[1:])
            spread = _cosines(parity_ref[:1].repeat(len(parity_ref), 0), parity_ref)[1:]
            results.append({
                **base, "parity": timed_cos >= cos_min, "timed_min_cosine": timed_cos,
                "mean_cosine_to_first_item": float(spread.mean()) if len(spread) else None,
                "timed_sets": len(sets) - 1, "items": n, "images": imgs, "prompt_tokens": tokens,
                "reference": _rates(t_ref, n, tokens, imgs, "items_per_s"),
                "vllm": _rates(t_vllm, n, tokens, imgs, "items_per_s"),
                "ratio_vllm_over_reference": t_ref / t_vllm,
            })
    return results


def reranker(ckpt: str, sets: list[dict], *, dtype: str, engine_kwargs: dict) -> dict:
    """``sets``: [parity set, timed set 1, ...] of reranker inputs (as ``embedding``)."""
    from qwen3vl_vllm.offline import Qwen3VLReranker
    from qwen3vl_vllm.reference import ReferenceReranker

    _, max_diff = PARITY[dtype]
    ref = ReferenceReranker(ckpt, dtype=dtype)
    tokens = 0
    for x in sets[1:]:
        tokens += sum(_ref_tokens(ref, [conv]) for conv in ref.pairs(x))
    parity_ref = ref.process(sets[0])
    t_ref, ref_scores = _clock(ref.process, sets[1:])  # one pair per forward, as upstream
    del ref
    gc.collect()
    with Qwen3VLReranker(ckpt, dtype=dtype, **engine_kwargs) as model:
        diff = float(np.max(np.abs(np.asarray(model.process(sets[0])) - np.asarray(parity_ref))))
        if diff > max_diff:
            return {"parity": False, "parity_max_abs_diff": diff, "dtype": dtype}
        t_vllm, got = _clock(model.process, sets[1:])
    timed_diff = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r)))) for g, r in zip(got, ref_scores))
    n = sum(len(x["documents"]) for x in sets[1:])
    imgs = sum(count_images("reranker", x) for x in sets[1:])
    return {
        "parity": timed_diff <= max_diff, "dtype": dtype, "parity_max_abs_diff": diff,
        "timed_max_abs_diff": timed_diff, "timed_sets": len(sets) - 1, "pairs": n, "images": imgs,
        "prompt_tokens": tokens,
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
