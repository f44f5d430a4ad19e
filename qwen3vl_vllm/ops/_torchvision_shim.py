"""Make a CUDA build of torchvision importable beside CPU torch (SPEC §4).

pip resolves torchvision 0.28.0 (a CUDA build) next to ``torch==2.13.0+cpu``. Its C extension
cannot load there, and the import then dies with ``operator torchvision::nms does not exist``
because the Python side registers fake kernels for ops the C library would have defined.

``install()`` puts a one-shot import hook in front of ``import torchvision``. When the hook
fires it tries to load torchvision's ``_C`` library; only if that fails does it define the two
op schemas (``nms``, ``qnms``) with no kernels, so the pure-Python transforms and the HF
Qwen image/video processors work. torchvision's C++ ops stay unavailable (nothing here needs
them). The hook is installed from a ``.pth`` file so vLLM's worker processes get it too; it
costs nothing until torchvision is imported and never touches a working torchvision.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_LIB = None  # keeps the torch.library.Library alive
_STATE = {"installed": False, "patched": False}


def _define_missing_ops() -> None:
    global _LIB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = list(spec.submodule_search_locations)[0]
    lib_path = None
    for name in os.listdir(folder):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            lib_path = os.path.join(folder, name)
    if lib_path is not None:
        try:
            torch.ops.load_library(lib_path)
            return  # a working build: leave it alone
        except Exception:  # noqa: BLE001 - any load failure means the ops are missing
            pass
    try:
        torch.ops.torchvision.nms.default  # defined by someone else already
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold, float? scale=None) -> Tensor"
    )
    _LIB = lib
    _STATE["patched"] = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib protocol
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            _define_missing_ops()
        except Exception:  # noqa: BLE001 - never break an import from a start-up hook
            pass
        return None  # let the normal finders import torchvision


def install() -> None:
    """Install the one-shot hook (idempotent; no-op once torchvision is imported)."""
    if _STATE["installed"] or "torchvision" in sys.modules:
        return
    _STATE["installed"] = True
    sys.meta_path.insert(0, _Finder())


def patched() -> bool:
    """True when the schemas had to be defined in this process."""
    return _STATE["patched"]
