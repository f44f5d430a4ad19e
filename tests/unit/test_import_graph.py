"""The package's import graph has no cycle (module-level or inside functions), and modules that
must import fast stay free of torch and vLLM at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "qwen3vl_vllm"
# Layers (``qwen3vl_vllm/<layer>/``) and what each may import of the package. The shared leaves
# (``errors``, ``quantize``, ``exitguard``: they import nothing of the package) are open to all.
LEAVES = {"errors", "quantize", "exitguard", "_moved", "__init__"}
MAY_IMPORT = {
    "prompts": {"prompts"},
    "media": {"prompts", "media"},
    "clients": {"prompts", "media", "clients"},
    "offline": {"prompts", "media", "offline"},
    "serving": {"prompts", "media", "serving"},
    "testing": {"prompts", "media", "serving", "testing"},  # the reference: see below
    "index": {"prompts", "clients", "offline", "index"},  # jobs on top: never serving internals
    "ops": {"prompts", "media", "serving", "clients", "offline", "testing", "index", "ops"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, include_functions: bool) -> set[str]:
    """The package's modules this file imports (absolute names; ``from pkg import mod`` counts
    as the module ``pkg.mod`` when that is a module)."""
    modules = _modules()
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if include_functions else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("qwen3vl_vllm"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qwen3vl_vllm"))
    return {m for m in found if m in modules and m != me}


def _graph(include_functions: bool) -> dict[str, set[str]]:
    return {name: _imports(path, include_functions) for name, path in _modules().items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else None


def _layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        layer = _layer(module)
        if layer is None:
            continue
        for dep in sorted(deps):
            dep_layer = _layer(dep)
            if dep_layer is not None and dep_layer not in MAY_IMPORT[layer]:
                bad.append(f"{module} imports {dep} ({layer} may import {sorted(MAY_IMPORT[layer])})")
    return bad


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


def test_every_module_is_in_a_layer_or_a_shared_leaf():
    loose = [m for m in _modules() if _layer(m) is None and m != "qwen3vl_vllm"
             and m.split(".")[-1] not in LEAVES]
    assert not loose, f"modules outside the layers: {loose}"
    leaves = [m for m in _modules() if _layer(m) is None and m != "qwen3vl_vllm"]
    graph = _graph(include_functions=True)
    for leaf in leaves:  # a shared leaf imports nothing of the package
        assert not graph[leaf] - {"qwen3vl_vllm"}, (leaf, graph[leaf])


@pytest.mark.parametrize("include_functions", [False, True])
def test_layers_import_only_what_they_may(include_functions):
    """prompts import nothing of the package; media at most prompts; clients, offline and
    serving use prompts and media, never each other; pure layers import no serving code."""
    assert _layer_breaches(_graph(include_functions)) == []


def test_a_layer_breach_would_be_found():
    graph = {"qwen3vl_vllm.prompts.inputs": {"qwen3vl_vllm.serving.plugin"},
             "qwen3vl_vllm.offline.engines": {"qwen3vl_vllm.serving.video_fit_hook",
                                              "qwen3vl_vllm.prompts.inputs", "qwen3vl_vllm.errors"}}
    assert _layer_breaches(graph) == [
        "qwen3vl_vllm.offline.engines imports qwen3vl_vllm.serving.video_fit_hook "
        "(offline may import ['media', 'offline', 'prompts'])",
        "qwen3vl_vllm.prompts.inputs imports qwen3vl_vllm.serving.plugin "
        "(prompts may import ['prompts'])"]


def test_the_reference_imports_nothing_of_the_package():
    assert _graph(include_functions=True)["qwen3vl_vllm.testing.reference"] == set()


def test_the_graph_sees_every_import_form():
    graph = _graph(include_functions=True)
    assert "qwen3vl_vllm.prompts.inputs" in graph["qwen3vl_vllm.prompts.engine"]  # from x import y
    assert "qwen3vl_vllm.serving.contract" in graph["qwen3vl_vllm.serving.plugin"]  # from pkg import mod, in a function
    assert len(graph) >= 45


@pytest.mark.parametrize("module", ["qwen3vl_vllm.serving.plugin", "qwen3vl_vllm.clients.embedding",
                                    "qwen3vl_vllm.clients.rerank", "qwen3vl_vllm.ops.cli",
                                    "qwen3vl_vllm.serving.settings", "qwen3vl_vllm.prompts.engine",
                                    "qwen3vl_vllm.prompts.inputs", "qwen3vl_vllm.media.sources",
                                    "qwen3vl_vllm.index.job", "qwen3vl_vllm.index.search",
                                    "qwen3vl_vllm.index.ray_backend"])
def test_light_modules_import_no_torch_or_vllm(module):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'vllm') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()} at import time"
