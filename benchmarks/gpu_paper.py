"""The GPU, on paper: what the serving path prepares per CPU core against what a GPU embeds.

    .venv/bin/python benchmarks/gpu_paper.py benchmarks/published/<run>/frontend.json

For each input kind of a ``frontend`` run: the items per second one core of API server
prepares (1000 / the plugin API server's CPU ms per item at c = 8, measured on this machine: HTTP,
JSON, template, decode, resize, HF processor, hashing, transport; the forward is in other
processes), against the items per second an H100 and an H200 embed for the 2B and 8B models,
computed from FLOPs at a stated MFU:

    FLOPs(item) = 2 * P_lm * T + 4 * L * T^2 * d_attn                    (language model)
                + sum over images of the vision tower's FLOPs over its patches
    items/s     = peak_bf16 * MFU / FLOPs(item)
    API servers = ceil(items/s / prepared per core)

``T`` is the measured prompt tokens per item (the tiny checkpoint has the real patch size and
merge, so image tokens are the real ones; its text tokenizer is not Qwen's). Patches come from
the image tokens: 4 per token (2 x 2 merge), each over 2 frames for video. Rerank pairs count
the language model only (their image documents' vision FLOPs are left out: an upper bound on
pairs/s). Write-ups: README "The GPU, on paper"; ``gpu_probe.py`` checks a box's own figures.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# dense bf16 peaks (NVIDIA datasheets, SXM, without sparsity): the H200 has the H100's compute
# and more, faster memory; at these sizes the forward is compute-bound, so they embed alike
GPUS = {"H100": 989.4e12, "H200": 989.4e12}
MFU = 0.40
SHAPES = {  # Qwen3-VL-2B / -8B (the embedding and reranker models share them)
    "2B": {"text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128),
           "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack=3)},
    "8B": {"text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128),
           "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack=3)},
}
PATCH, TEMPORAL, MERGE = 16, 2, 2
# prompt tokens of the reference's template around one image (system turn, user turn, vision
# markers, generation prompt): measured as the 512x512 photo's prompt tokens minus its 256
# image tokens, in ``table`` below
IMAGE_TOKENS = {"photo-512": (512 // 32) * (512 // 32), "photo-1280": (1280 // 32) * (960 // 32)}


def lm_flops(shape: dict, tokens: float) -> float:
    t = shape["text"]
    h, heads, kv, hd = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    per_token = 2 * t["num_hidden_layers"] * (h * heads * hd + 2 * h * kv * hd + heads * hd * h
                                              + 3 * h * t["intermediate_size"])
    attention = 4 * t["num_hidden_layers"] * tokens * tokens * heads * hd
    return per_token * tokens + attention


def vision_flops(shape: dict, patches: float, frames_per_patch: int = TEMPORAL) -> float:
    v, out = shape["vision"], shape["text"]["hidden_size"]
    h, inter, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
    embed = 2 * (3 * frames_per_patch * PATCH * PATCH) * h * patches
    block = 2 * (4 * h * h + 2 * h * inter) * patches + 4 * patches * patches * h
    mh = h * MERGE * MERGE
    merger = 2 * (mh * mh + mh * out) * (patches / MERGE ** 2) * (1 + v["deepstack"])
    return embed + depth * block + merger


def item_flops(shape: dict, kind: str, prompt_tokens: float, template_tokens: float) -> float:
    if kind.startswith("text") or kind.startswith("rerank"):
        return lm_flops(shape, prompt_tokens)
    visual = max(prompt_tokens - template_tokens, 0.0)
    return lm_flops(shape, prompt_tokens) + vision_flops(shape, visual * MERGE ** 2)


def table(frontend: dict, mfu: float = MFU) -> list[dict]:
    kinds = frontend["kinds"]
    photo = kinds.get("photo-512", {}).get("sides", {}).get("plugin", {}).get("8", {})
    template = (photo.get("prompt_tokens_per_item", 0.0) - IMAGE_TOKENS["photo-512"]) if photo else 30.0
    rows = []
    for kind, k in kinds.items():
        plug = k["sides"].get("plugin", {}).get("8")
        if not plug:
            continue
        api_ms = plug["by_process"].get("api_server", {}).get("median")
        if not api_ms:
            continue
        tokens = plug.get("prompt_tokens_per_item", 0.0)
        row = {"kind": kind, "prompt_tokens": tokens, "api_server_ms": api_ms, "prepared_per_core": 1000 / api_ms,
               "engine_core_ms": plug["by_process"].get("engine_core", {}).get("median", 0.0)}
        for size, shape in SHAPES.items():
            flops = item_flops(shape, kind, tokens, template)
            row[f"{size}_tflop"] = flops / 1e12
            for gpu, peak in GPUS.items():
                rate = peak * mfu / flops
                row[f"{size}_{gpu}_items_per_s"] = rate
                row[f"{size}_{gpu}_api_servers"] = math.ceil(rate / row["prepared_per_core"])
        rows.append(row)
    return rows


def markdown(rows: list[dict], mfu: float = MFU) -> str:
    head = ("| input | prompt tokens | API server CPU ms/item (measured) | prepared per core/s | "
            "2B: H100 / H200 items/s | API servers | 8B: H100 / H200 items/s | API servers |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['prompt_tokens']:.0f} | {r['api_server_ms']:.2f} | {r['prepared_per_core']:.0f} | "
            f"{r['2B_H100_items_per_s']:.0f} / {r['2B_H200_items_per_s']:.0f} | {r['2B_H100_api_servers']} | "
            f"{r['8B_H100_items_per_s']:.0f} / {r['8B_H200_items_per_s']:.0f} | {r['8B_H100_api_servers']} |")
    lines.append(f"\nMFU {mfu:.0%} of the dense bf16 peak ({GPUS['H100'] / 1e12:.0f} TFLOP/s for both).")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("frontend_json")
    ap.add_argument("--mfu", type=float, default=MFU)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = table(json.loads(Path(args.frontend_json).read_text()), args.mfu)
    print(markdown(rows, args.mfu))
    if args.out:
        Path(args.out).write_text(json.dumps({"mfu": args.mfu, "gpus_peak_flops": GPUS, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
