"""The package's import graph has no cycle (module-level or inside functions), and modules that
must import fast stay free of torch and vLLM at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "qwen3vl_vllm"


def _graph(include_functions: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.glob("*.py"):
        name = path.stem
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if include_functions else tree.body
        deps = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if (PKG / f"{d}.py").exists()} - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("include_functions", [False, True])
def test_no_import_cycle(include_functions):
    assert _cycle(_graph(include_functions)) is None


def test_a_cycle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", ["qwen3vl_vllm.plugin", "qwen3vl_vllm.client", "qwen3vl_vllm.cli",
                                    "qwen3vl_vllm.settings", "qwen3vl_vllm.inputs"])
def test_light_modules_import_no_torch_or_vllm(module):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'vllm') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()} at import time"
