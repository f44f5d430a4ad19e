"""Write a benchmark run as JSON (everything), markdown (the table) and PNG (plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _fmt(v, nd=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{nd}f}" if isinstance(v, float) else str(v)


def ratio(o: dict) -> str:
    """'**1.23×** (1.10–1.31, 5 rounds)': the median of the rounds' ratios and their range."""
    n = len(o.get("rounds", []))
    return f"**{o['ratio']:.2f}×** ({o['ratio_min']:.2f}–{o['ratio_max']:.2f}, {n} rounds)"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# qwen3vl-vllm benchmark ({res['mode']})", "",
             f"{res['date']} · {m['cpu']} · {m['cores']} cores · {m['memory_gib']:.0f} GiB · "
             f"vLLM {res['versions']['vllm']} · torch {res['versions']['torch']} · "
             f"transformers {res['versions']['transformers']}", "",
             "## Offline (same inputs, dtype and machine; parity checked before timing)", "",
             "Each round times both sides on input sets new to both, alternating which goes first; "
             "the ratio is the median of the rounds' ratios, with their range.", "",
             "| model | workload | dtype | parity | per round | reference | vLLM (qwen3vl-vllm) | vLLM / reference |",
             "|---|---|---|---|---|---|---|---|"]
    real = []
    for o in res["offline"]:
        if not o.get("parity"):  # the worst figure: of the timed sets when it got that far
            timed = "reference" in o
            worst = (f"cos {o['timed_min_cosine' if timed else 'parity_min_cosine']:.6f}" if "parity_min_cosine" in o
                     else f"|Δ| {o['timed_max_abs_diff' if timed else 'parity_max_abs_diff']:.3g}")
            lines.append(f"| {o['model']} | {o['workload']} | {o['dtype']} | FAILED on the "
                         f"{'timed' if timed else 'parity'} sets ({worst}) | | not counted | not counted | - |")
            continue
        if o["model"] != "tiny":
            real.append(o)
        unit, key, size = (("items/s", "items_per_s", f"{o.get('items_per_round', '?')} items") if "items" in o
                           else ("pairs/s", "pairs_per_s", f"{o.get('pairs_per_round', '?')} pairs"))
        par = (f"cos ≥ {o['timed_min_cosine']:.6f}" if "timed_min_cosine" in o
               else f"|Δ| ≤ {o['timed_max_abs_diff']:.1e}")
        lines.append(f"| {o['model']} | {o['workload']} | {o['dtype']} | {par} | {size} | "
                     f"{_fmt(o['reference'][key], 2)} {unit}, {_fmt(o['reference']['tokens_per_s'])} tok/s | "
                     f"{_fmt(o['vllm'][key], 2)} {unit}, {_fmt(o['vllm']['tokens_per_s'])} tok/s"
                     + (f", {_fmt(o['vllm']['images_per_s'], 2)} img/s" if "images_per_s" in o["vllm"] else "")
                     + f" | {ratio(o)} |")
    for o in res["offline"]:
        q = o.get("query_sharing")
        if q:
            lines += ["", f"{o['workload']}: the image query under one id in all 20 pairs (as `process` sends it) "
                          f"vs a fresh id per pair: **{q['ratio']:.2f}×** faster (range {q['ratio_min']:.2f}–"
                          f"{q['ratio_max']:.2f}, {len(q['rounds'])} rounds; scores equal within {q['max_abs_diff']:.1e})."]
    if real:
        lines += ["", "## Real shape offline (2B-shaped bf16; MFU counts the language model and the vision tower)", "",
                  "| workload | per round | GFLOP/round | reference | vLLM | vLLM / reference | peak RSS (reference and engine loaded) |",
                  "|---|---|---|---|---|---|---|"]
        for o in real:
            unit, key, size = (("items/s", "items_per_s", o.get("items_per_round")) if "items" in o
                               else ("pairs/s", "pairs_per_s", o.get("pairs_per_round")))
            per_round = o.get("gflop", 0) / max(1, len(o["rounds"]))
            lines.append(f"| {o['workload']} | {size} | {per_round:,.0f} | "
                         f"{_fmt(o['reference'][key], 2)} {unit}, MFU {100 * o['reference'].get('mfu', 0):.1f} % | "
                         f"{_fmt(o['vllm'][key], 2)} {unit}, MFU {100 * o['vllm'].get('mfu', 0):.1f} % | "
                         f"{ratio(o)} | {o.get('peak_rss_gib', 0):.1f} GiB |")
    if res.get("mfu"):
        f = res["mfu"]
        lines += ["", "## Near the physical limit", "",
                  f"{f['model']} {f['dtype']}: {f['tokens_per_s']:.1f} prompt tokens/s (vLLM offline, "
                  f"{f['workload']}) × {f['gflop_per_token']:.2f} GFLOP/token = "
                  f"{f['achieved_gflops']:.1f} GFLOP/s; this machine's {f['dtype']} matmul peak "
                  f"{f['peak_gflops']:.1f} GFLOP/s → **MFU {100 * f['mfu']:.1f} %**"]
    if res.get("cpu_serving"):
        offline_mfu = res.get("mfu", {}).get("mfu")
        lines += ["", "## Real-shape serving on CPU (2B-shaped bf16, zero model flags)", "",
                  "| server | /health | first text | first 640×480 image | mixed c=1 | mixed c=4 | text tok/s | served MFU (offline) | peak RSS |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["cpu_serving"]:
            if not r.get("started"):
                lines.append(f"| {r['kind']} | did not start: {r.get('error')} | | | | | | | |")
                continue
            mfu = (f"{100 * r['served_text_mfu']:.1f} %" if r.get("served_text_mfu") else "–") + (
                f" ({100 * offline_mfu:.1f} %)" if offline_mfu else "")
            lines.append(f"| {r['kind']} | {r['health_s']:.0f} s | {r['first_text_s']:.2f} s | "
                         f"{r['first_image_s']:.2f} s | {r['mixed_c1_req_s']:.3f} req/s | "
                         f"{r['mixed_c4_req_s']:.3f} req/s | {r['text_prompt_tokens_per_s']:.0f} | {mfu} | "
                         f"{r['peak_rss_gib']:.1f} GiB |")
    lines += ["", "## Serving (async load generator, 127.0.0.1)", "",
              "| server | endpoint | mode | workload | concurrency | req/s | items/s | tok/s | p50 ms | p90 ms | p99 ms | failed | peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in res["serving"]:
        for lv in s["levels"]:
            lines.append(f"| {s['server']} | {s['endpoint']} | {s['mode']} | {s['workload']} | {lv['concurrency']} | "
                         f"{_fmt(lv['requests_per_s'])} | {_fmt(lv['items_per_s'])} | {_fmt(lv['tokens_per_s'], 0)} | "
                         f"{_fmt(lv['p50_ms'], 0)} | {_fmt(lv['p90_ms'], 0)} | {_fmt(lv['p99_ms'], 0)} | "
                         f"{lv['failed']} | {_fmt(s['peak_mib'], 0)} |")
    if res.get("plugin_overhead"):
        p = res["plugin_overhead"]
        lines += ["", f"Plugin-configured server / plain vLLM with hand-written flags (req/s at "
                      f"concurrency {p['concurrency']}, alternating rounds on requests new to both):", ""]
        for name, w in p["workloads"].items():
            lines.append(f"- {name} ({w['requests_per_round']} requests per side and round): "
                         f"**{w['ratio']:.3f}** (range {w['ratio_min']:.3f}–{w['ratio_max']:.3f}, "
                         f"median of {len(w['rounds'])} rounds; overhead {100 * (1 - w['ratio']):+.1f} %)")
        m = p.get("middleware_us_per_request")
        if m:
            lines.append(f"- the plugin's ASGI middlewares add {m['added_us']:.1f} µs per request "
                         f"({m['with_middlewares_us']:.1f} vs {m['bare_app_us']:.1f} µs around an app that answers at once)")
    if res.get("crosscheck"):
        c = res["crosscheck"]
        lines += ["", f"Cross-check with `vllm bench serve --backend {c['backend']}` "
                      f"(concurrency {c['concurrency']}, {c['num_prompts']} prompts of ~{c['input_len']} tokens): "
                      f"{c['vllm_bench_rps']:.1f} req/s vs ours {c['ours_rps']:.1f} req/s "
                      f"(ratio {c['ratio']:.2f}). {c['note']}"]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for s in res["serving"]:
        xs = [lv["concurrency"] for lv in s["levels"]]
        label = f"{s['server']} {s['endpoint']} {s['mode']}"
        a.plot(xs, [lv["requests_per_s"] for lv in s["levels"]], marker="o", label=label)
        b.plot(xs, [lv["p99_ms"] for lv in s["levels"]], marker="o", label=label)
    for ax, title in ((a, "throughput (requests/s)"), (b, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(f"qwen3vl-vllm serving, {res['machine']['cpu']}, {res['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "results.md").write_text(markdown(res))
    plot(res, out / "throughput.png")


def check(res: dict) -> list[str]:
    """Every figure present and positive, parity passed, zero failed requests."""
    problems = []

    def positive(where, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or math.isnan(v):
            problems.append(f"{where}: {v!r} is not a positive number")

    for o in res["offline"]:
        if not o.get("parity"):
            problems.append(f"offline {o.get('workload')}: parity check failed")
            continue
        for side in ("reference", "vllm"):
            for k, v in o[side].items():
                positive(f"offline {o['workload']} {side}.{k}", v)
        for k in ("ratio", "ratio_min", "ratio_max"):
            positive(f"offline {o['workload']} {k}", o[k])
        if len(o.get("rounds", [])) < 2:
            problems.append(f"offline {o['workload']}: fewer than 2 alternating rounds")
    for s in res["serving"]:
        positive(f"serving {s['server']} peak_mib", s["peak_mib"])
        for lv in s["levels"]:
            if lv["failed"]:
                problems.append(f"serving {s['server']} {s['mode']} c={lv['concurrency']}: "
                                f"{lv['failed']} failed ({lv['failures'][:2]})")
            for k in ("requests_per_s", "items_per_s", "p50_ms", "p90_ms", "p99_ms"):
                positive(f"serving {s['server']} {s['mode']} c={lv['concurrency']} {k}", lv[k])
            if s["mode"] == "http":
                positive(f"serving {s['server']} c={lv['concurrency']} tokens_per_s", lv["tokens_per_s"])
    for key in ("plugin_overhead", "crosscheck", "mfu"):
        if key not in res:
            problems.append(f"{key}: missing")
    if "plugin_overhead" in res:
        for name, w in res["plugin_overhead"]["workloads"].items():
            positive(f"plugin_overhead {name} ratio", w["ratio"])
    if "crosscheck" in res:
        positive("crosscheck.vllm_bench_rps", res["crosscheck"]["vllm_bench_rps"])
    if "mfu" in res:
        positive("mfu", res["mfu"]["mfu"])
    for r in res.get("cpu_serving", []):  # --full only: a real-shape server that must start and answer
        if not r.get("started"):
            problems.append(f"cpu_serving {r['kind']}: server did not start ({r.get('error')})")
        elif r.get("failures"):
            problems.append(f"cpu_serving {r['kind']}: {len(r['failures'])} failed ({r['failures'][:2]})")
        else:
            for k in ("health_s", "first_text_s", "first_image_s", "mixed_c1_req_s", "mixed_c4_req_s",
                      "text_prompt_tokens_per_s", "peak_rss_gib"):
                positive(f"cpu_serving {r['kind']} {k}", r.get(k))
    return problems
