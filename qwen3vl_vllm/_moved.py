"""Old flat module names, still importable: ``qwen3vl_vllm.plugin`` is ``qwen3vl_vllm.serving.plugin``.

Why: names outside the package outlive a move. An environment installed before the package had
layers keeps ``qwen3vl_vllm.plugin:register`` in its entry-point metadata and
``qwen3vl_vllm._torchvision_shim`` in its start-up hook until it is reinstalled; users' scripts,
``--middleware`` flags and ``python -m qwen3vl_vllm.cli`` name old modules. Each old name is
served by the same module object as its new name (one copy of every module state), with a
``DeprecationWarning`` naming the new one. ``qwen3vl_vllm.media`` and ``qwen3vl_vllm.offline``
are packages now; their old public names resolve from the package (see their ``__init__``).

Example::

    >>> import qwen3vl_vllm.plugin, qwen3vl_vllm.serving.plugin
    >>> qwen3vl_vllm.plugin is qwen3vl_vllm.serving.plugin
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "inputs": "prompts.inputs", "truncation": "prompts.truncation", "video_fit": "prompts.video_fit",
    "sources": "media.sources", "fetch": "media.fetch", "budget": "media.budget",
    "plugin": "serving.plugin", "settings": "serving.settings", "detect": "serving.detect",
    "contract": "serving.contract", "embed_inputs": "serving.embed_inputs",
    "score_truncation": "serving.score_truncation", "video_fit_hook": "serving.video_fit_hook",
    "media_connector": "serving.media_connector", "video_loader": "serving.video_loader",
    "server_auth": "serving.auth", "server_policy": "serving.policy",
    "server_errors": "serving.error_naming",
    "messages": "clients.messages", "client": "clients.embedding", "rerank_client": "clients.rerank",
    "config": "ops.config", "launcher": "ops.launcher", "deploy": "ops.deploy", "cli": "ops.cli",
    "demo": "ops.demo", "envfix": "ops.envfix", "_torchvision_shim": "ops._torchvision_shim",
    "checkpoint": "testing.checkpoint", "reference": "testing.reference",
}
PREFIX = "qwen3vl_vllm."


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (the same object)."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import system set the old name's spec on it

    def get_code(self, fullname):  # ``python -m <old name>``: the new module's code, as __main__
        return importlib.util.find_spec(self.target).loader.get_code(self.target)

    def is_package(self, fullname):
        return False


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(PREFIX):] if fullname.startswith(PREFIX) else None
        if old not in MOVED:
            return None
        new = PREFIX + MOVED[old]
        if old != "_torchvision_shim":  # the start-up hook of older installs: silent
            warnings.warn(f"{fullname} is now {new}; the old name will go", DeprecationWarning,
                          stacklevel=2)
        spec = importlib.util.find_spec(new)
        return importlib.util.spec_from_loader(fullname, _Alias(new), origin=spec.origin)


def install() -> None:
    """Idempotent; called by ``qwen3vl_vllm/__init__``."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
