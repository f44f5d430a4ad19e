"""The built wheel holds the whole package, and every name something outside it relies on works.

An editable install keeps the tests green whatever the wheel holds (a hand-written
``packages = ["qwen3vl_vllm"]`` shipped none of the subpackages), so the wheel is built here,
installed into a folder of its own, and every module is imported *from that folder* in a fresh
interpreter: a module missing from the wheel would come from the source tree instead and fail
the ``__file__`` check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "qwen3vl_vllm"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "-w", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # setuptools' warnings (e.g. data folders that look like unlisted packages) are not wanted
    assert "BuildBackendWarning" not in run.stderr + run.stdout, run.stderr[-3000:]
    (found,) = out.glob("qwen3vl_vllm-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
                          "--disable-pip-version-check", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return target


def _source_files() -> set[str]:
    files = {p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py")}
    files |= {p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.jinja")}
    return files


def test_the_wheel_holds_every_module_and_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_files() - names)
    assert not missing, f"not in the wheel: {missing}"
    assert any(n.endswith("prompts/templates/reranker.jinja") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "benchmarks/"))]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "qwen3vl_vllm = qwen3vl_vllm.serving.plugin:register" in text
    assert "qwen3vl-vllm = qwen3vl_vllm.ops.cli:main" in text


def _in_fresh_interpreter(site: Path, code: str) -> dict:
    """Run ``code`` (which prints one JSON line) with the installed wheel first on sys.path.
    The start-up hook of the test environment has imported the source tree's package already:
    that copy is set aside first."""
    prog = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            # kept alive: the hook's torch.library objects unregister their ops when freed
            "_kept = [sys.modules.pop(m) for m in list(sys.modules) if m.split('.')[0] == 'qwen3vl_vllm']\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != 'qwen3vl_vllm._moved']\n"
            "import importlib; importlib.invalidate_caches()\n" + code)
    run = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300,
                         cwd=str(site))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_module_imports_from_the_installed_wheel(installed):
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in PKG.rglob("*.py"))
    got = _in_fresh_interpreter(installed, f"""
import importlib, json
site = {str(installed)!r}
bad = {{}}
for name in {modules!r}:
    try:
        module = importlib.import_module(name)
        if not str(getattr(module, "__file__", "")).startswith(site):
            bad[name] = "imported from " + str(getattr(module, "__file__", None))
    except Exception as e:
        bad[name] = repr(e)
print(json.dumps({{"n": {len(modules)}, "bad": bad}}))
""")
    assert got["bad"] == {}
    assert got["n"] >= 45


def _launch_sh_modules() -> set[str]:
    return set(re.findall(r"-m (qwen3vl_vllm(?:\.[A-Za-z_]+)+)", (ROOT / "launch.sh").read_text()))


def test_every_name_outside_the_package_relies_on(installed):
    """The public names, the entry point and console script, the middleware paths given to vLLM,
    the start-up hook's module, launch.sh's ``-m`` modules, and the old flat names (the same
    module objects, from the wheel)."""
    from qwen3vl_vllm._moved import MOVED
    from qwen3vl_vllm.ops.envfix import PTH_LINE
    from qwen3vl_vllm.serving.settings import MIDDLEWARES

    assert {"qwen3vl_vllm.ops.cli", "qwen3vl_vllm.ops.envfix", "qwen3vl_vllm.serving.contract"} <= _launch_sh_modules()
    got = _in_fresh_interpreter(installed, f"""
import importlib, importlib.metadata as md, json, warnings
import qwen3vl_vllm
out = {{"public": sorted(n for n in qwen3vl_vllm.__all__ if n != "__version__"
                        and getattr(qwen3vl_vllm, n) is None)}}
dist = md.distribution("qwen3vl-vllm")
eps = {{(e.group, e.name): e for e in dist.entry_points}}
out["plugin"] = eps[("vllm.general_plugins", "qwen3vl_vllm")].load().__module__
out["script"] = eps[("console_scripts", "qwen3vl-vllm")].load().__module__
def resolve(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name).__name__
out["middlewares"] = [resolve(p) for p in {list(MIDDLEWARES)!r}]
exec({PTH_LINE!r})
out["shim"] = "qwen3vl_vllm.ops._torchvision_shim" in sys.modules
out["launch"] = [importlib.import_module(m).__name__ for m in {sorted(_launch_sh_modules())!r}]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    same = {{old: importlib.import_module("qwen3vl_vllm." + old) is importlib.import_module("qwen3vl_vllm." + new)
             for old, new in {MOVED!r}.items()}}
out["moved_not_same"] = [k for k, v in same.items() if not v]
out["moved_warned"] = sum(issubclass(w.category, DeprecationWarning) for w in caught)
import qwen3vl_vllm.media as media, qwen3vl_vllm.offline as offline
out["old_packages"] = [media.prepare_image.__module__, offline.Qwen3VLEmbedder.__module__]
out["files"] = sorted({{m.__file__.startswith({str(installed)!r}) for m in
                       (qwen3vl_vllm, importlib.import_module("qwen3vl_vllm.serving.plugin"))}})
print(json.dumps(out))
""")
    assert got["public"] == []
    assert got["plugin"] == "qwen3vl_vllm.serving.plugin"
    assert got["script"] == "qwen3vl_vllm.ops.cli"
    assert got["middlewares"] == [p.rsplit(".", 1)[1] for p in MIDDLEWARES]
    assert got["shim"] is True
    assert len(got["launch"]) == len(_launch_sh_modules())
    assert got["moved_not_same"] == []
    assert got["moved_warned"] == len(MOVED) - 1  # the start-up hook's old name is silent
    assert got["old_packages"] == ["qwen3vl_vllm.media.decode", "qwen3vl_vllm.offline.engines"]
    assert got["files"] == [True]


def test_python_dash_m_with_an_old_name_still_runs(installed):
    run = subprocess.run([sys.executable, "-m", "qwen3vl_vllm.cli", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=str(installed),
                         env={**__import__("os").environ, "PYTHONPATH": str(installed)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "serve" in run.stdout


def test_the_old_settings_module_keeps_both_halves():
    """``qwen3vl_vllm.settings`` held the engine settings and the server's; after the split the
    old name still gives both (the docstring example of old releases used the former)."""
    import warnings

    from qwen3vl_vllm.prompts import engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from qwen3vl_vllm.settings import MIDDLEWARES, effective_engine_kwargs
    assert effective_engine_kwargs is engine.effective_engine_kwargs
    assert MIDDLEWARES[-1].endswith("serving.auth.ApiKeyMiddleware")
    with pytest.raises(ImportError, match="cannot import name 'nothing_here'"):
        from qwen3vl_vllm.settings import nothing_here  # noqa: F401
