"""Offline throughput: the transformers reference vs the project's offline API on vLLM, same
inputs, dtype and machine, in one run. Parity is checked before anything is timed, and every
timed set is new to both sides: vLLM caches prefixes and processed media, so timing a set it has
already seen measures its caches (7x faster on reranking here), not its throughput."""

from __future__ import annotations

import gc
import time

import numpy as np

from workloads import count_images

# (min cosine of an embedding, max |score difference| of a reranker pair) between vLLM and the
# reference in the same dtype. In bfloat16 both sides carry their own rounding error: on the
# 2B-shaped reranker with 640x480 image documents (20 pairs, benchmarks/bf16_noise.py,
# 2026-11-29) the bf16 reference differed from its own float32 run by up to 0.018 and vLLM bf16
# from that float32 run by up to 0.017, so the two bf16 sides may differ by their sum (0.026
# seen); the bound is twice the reference's own bf16 error. Identity is shown in float32.
PARITY = {"float32": (0.9999, 1e-4), "bfloat16": (0.999, 4e-2)}

# engine settings of the 2B-shaped bf16 rows (run.real_shape_offline, bf16_noise.py): an explicit
# KV cache, as the 2B reranker's 10,245-token prompt needs 1.1 GiB; start these engines without
# VLLM_CPU_KVCACHE_SPACE in the environment, which vLLM lets override it
REAL_SHAPE_ENGINE = {"max_num_seqs": 32, "max_num_batched_tokens": 4096, "enforce_eager": True,
                     "kv_cache_memory_bytes": 3 * 2 ** 30}


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


def _clock(fn, calls: list) -> tuple[float, list]:
    """Total seconds over ``calls`` (each input set processed once) and the outputs."""
    outs, total = [], 0.0
    for x in calls:
        t0 = time.perf_counter()
        outs.append(fn(x))
        total += time.perf_counter() - t0
    return total, outs


def summary(ratios: list[float]) -> dict:
    """Median and range of per-round ratios (the figures the tables print)."""
    r = sorted(ratios)
    mid = len(r) // 2
    median = r[mid] if len(r) % 2 else (r[mid - 1] + r[mid]) / 2
    return {"ratio": median, "ratio_min": r[0], "ratio_max": r[-1],
            "spread": max(r[-1] / median - 1, 1 - r[0] / median)}


def alternate(ref_fn, vllm_fn, rounds: list[list], compare) -> tuple[list[dict], float]:
    """Time both sides on each round's input sets, alternating who goes first (ABBA), so drift
    on a shared machine hits both sides alike. Every round's sets are new to both sides.
    ``compare(vllm_out, ref_out)`` -> the parity figure of a timed set (min cosine / max |Δ|).
    -> (per-round rows, worst parity figure over all timed sets)."""
    rows, worst = [], []
    for r, calls in enumerate(rounds):
        order = [("reference", ref_fn), ("vllm", vllm_fn)]
        if r % 2:
            order.reverse()
        got = {}
        for side, fn in order:
            got[side] = _clock(fn, calls)
        worst += [compare(g, x) for g, x in zip(got["vllm"][1], got["reference"][1])]
        rows.append({"round": r, "first": order[0][0], "reference_s": got["reference"][0],
                     "vllm_s": got["vllm"][0], "ratio": got["reference"][0] / got["vllm"][0]})
    return rows, worst


def _row(base: dict, rows: list[dict], n: int, tokens: int, imgs: int, unit: str) -> dict:
    t_ref, t_vllm = sum(x["reference_s"] for x in rows), sum(x["vllm_s"] for x in rows)
    return {**base, "rounds": rows, "items" if unit == "items_per_s" else "pairs": n, "images": imgs,
            "prompt_tokens": tokens, "reference": _rates(t_ref, n, tokens, imgs, unit),
            "vllm": _rates(t_vllm, n, tokens, imgs, unit),
            **summary([x["ratio"] for x in rows])}


def embedding(ckpt: str, workloads: dict, *, dtype: str, engine_kwargs: dict, rounds: int) -> list[dict]:
    """``workloads``: name -> ``make(k)``, the input sets of round ``k`` (k = 0 is the parity
    set, checked before anything is timed; it also warms both sides up).

    The reference and the engine stay loaded side by side for the whole run, so rounds can
    alternate between them.
    """
    from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder
    from qwen3vl_vllm.testing.reference import ReferenceEmbedder

    cos_min, _ = PARITY[dtype]
    ref = ReferenceEmbedder(ckpt, dtype=dtype)
    results = []
    with Qwen3VLEmbedder(ckpt, dtype=dtype, **engine_kwargs) as model:
        for name, make in workloads.items():
            parity = make(0)
            parity_ref = np.concatenate([ref.process(x) for x in parity])
            cos = _cosines(np.concatenate([model.process(x) for x in parity]), parity_ref)
            base = {"workload": name, "dtype": dtype, "parity_min_cosine": float(cos.min())}
            if cos.min() < cos_min:
                results.append({**base, "parity": False})
                continue
            timed = [make(k + 1) for k in range(rounds)]
            rows, worst = alternate(ref.process, model.process, timed,
                                    lambda g, r: float(_cosines(g, r).min()))
            sets = [x for calls in timed for x in calls]
            tokens = sum(_ref_tokens(ref, ref.conversations(x)) for x in sets)
            spread = _cosines(parity_ref[:1].repeat(len(parity_ref), 0), parity_ref)[1:]
            results.append(_row({**base, "parity": min(worst) >= cos_min, "timed_min_cosine": min(worst),
                                 "mean_cosine_to_first_item": float(spread.mean()) if len(spread) else None,
                                 "items_per_round": sum(len(x) for x in timed[0])},
                                rows, sum(len(x) for x in sets), tokens,
                                sum(count_images("embedding", x) for x in sets), "items_per_s"))
            print(f"[bench] offline {name}: {results[-1]['ratio']:.2f}x (range "
                  f"{results[-1]['ratio_min']:.2f}-{results[-1]['ratio_max']:.2f}, {rounds} rounds)", flush=True)
    del ref
    gc.collect()
    return results


def reranker(ckpt: str, workloads: dict, *, dtype: str, engine_kwargs: dict, rounds: int,
             sharing: tuple[str, ...] = ()) -> list[dict]:
    """As ``embedding``, for reranker inputs (``make(k)`` -> a list of {query, documents}).

    For workloads named in ``sharing`` (an image query), each round also times vLLM with the
    query's media given a different id in every pair: the gain of serving the shared query
    from the encoder and prefix caches, measured in the same round.
    """
    from qwen3vl_vllm.offline.engines import Qwen3VLReranker
    from qwen3vl_vllm.testing.reference import ReferenceReranker

    _, max_diff = PARITY[dtype]
    ref = ReferenceReranker(ckpt, dtype=dtype)
    results = []

    def diff(g, r):
        return float(np.max(np.abs(np.asarray(g) - np.asarray(r))))

    with Qwen3VLReranker(ckpt, dtype=dtype, **engine_kwargs) as model:
        for name, make in workloads.items():
            parity = make(0)
            d = max(diff(model.process(x), ref.process(x)) for x in parity)
            base = {"workload": name, "dtype": dtype, "parity_max_abs_diff": d}
            if d > max_diff:
                results.append({**base, "parity": False})
                continue
            timed = [make(k + 1) for k in range(rounds)]
            rows, worst = alternate(ref.process, model.process, timed, diff)
            sets = [x for calls in timed for x in calls]
            tokens = sum(_ref_tokens(ref, [conv]) for x in sets for conv in ref.pairs(x))
            row = _row({**base, "parity": max(worst) <= max_diff, "timed_max_abs_diff": max(worst),
                        "pairs_per_round": sum(len(x["documents"]) for x in timed[0])},
                       rows, sum(len(x["documents"]) for x in sets), tokens,
                       sum(count_images("reranker", x) for x in sets), "pairs_per_s")
            if name in sharing:
                row["query_sharing"] = _query_sharing(model, [make(100 + k) for k in range(rounds)])
            results.append(row)
            print(f"[bench] offline {name}: {row['ratio']:.2f}x (range {row['ratio_min']:.2f}-"
                  f"{row['ratio_max']:.2f}, {rounds} rounds)", flush=True)
    del ref
    gc.collect()
    return results


def _query_sharing(model, rounds: list[list]) -> dict:
    """vLLM with the query's media under one id in all pairs (as ``process`` sends them) vs a
    different id per pair (as a client without ids would look to the caches), alternating."""

    def run(inputs, shared: bool):
        prompts = model.pair_prompts(inputs)
        if not shared:
            for i, p in enumerate(prompts):
                p["multi_modal_uuids"] = {k: [f"{u}.pair{i}" for u in v]
                                          for k, v in p.get("multi_modal_uuids", {}).items()}
        return [float(o.outputs.probs[-1]) for o in model.llm.classify(prompts, use_tqdm=False)]

    rows, worst = alternate(lambda x: run(x, False), lambda x: run(x, True), rounds,
                            lambda g, r: float(np.max(np.abs(np.asarray(g) - np.asarray(r)))))
    return {"rounds": rows, "max_abs_diff": max(worst), **summary([x["ratio"] for x in rows]),
            "note": "ratio = seconds with a fresh query id per pair / seconds with one shared id"}


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


def vision_flops_per_image(ckpt: str, width: int, height: int) -> float:
    """Dense forward FLOPs of the vision tower for one image at its final size: patch embedding,
    each block's projections, MLP and attention (quadratic in the image's patches), and the
    merger plus one deepstack merger per listed layer."""
    import json
    from pathlib import Path

    v = json.loads((Path(ckpt) / "config.json").read_text())["vision_config"]
    h, inter, depth, p, t = v["hidden_size"], v["intermediate_size"], v["depth"], v["patch_size"], v["temporal_patch_size"]
    m, out = v["spatial_merge_size"], v["out_hidden_size"]
    patches = (width // p) * (height // p)
    embed = 2 * (v["in_channels"] * t * p * p) * h * patches
    block = 2 * (4 * h * h + 2 * h * inter) * patches + 4 * patches * patches * h
    merged, mh = patches // (m * m), h * m * m
    merger = 2 * (mh * mh + mh * out) * merged * (1 + len(v.get("deepstack_visual_indexes", [])))
    return float(embed + depth * block + merger)


def workload_flops(ckpt: str, prompt_tokens: int, image_sizes: list[tuple[int, int]]) -> float:
    """Language model over every prompt token plus the vision tower over every image."""
    return prompt_tokens * text_flops_per_token(ckpt) + sum(
        vision_flops_per_image(ckpt, w, h) for w, h in image_sizes)
