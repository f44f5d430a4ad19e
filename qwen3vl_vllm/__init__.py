"""qwen3vl-vllm: Qwen3-VL-Embedding and Qwen3-VL-Reranker on vLLM, identical to the reference.

Public names are imported lazily so that ``import qwen3vl_vllm`` (run at every interpreter
start by the torchvision start-up hook, and by vLLM's plugin loader) costs nothing.
"""

from __future__ import annotations

import importlib

from qwen3vl_vllm import _moved

__version__ = "0.1.0"
_moved.install()  # old flat module names keep working (``_moved``)

_EXPORTS = {
    "Qwen3VLEmbedder": "qwen3vl_vllm.offline.engines",
    "Qwen3VLReranker": "qwen3vl_vllm.offline.engines",
    "EmbeddingClient": "qwen3vl_vllm.clients.embedding",
    "AsyncEmbeddingClient": "qwen3vl_vllm.clients.embedding",
    "RerankClient": "qwen3vl_vllm.clients.rerank",
    "AsyncRerankClient": "qwen3vl_vllm.clients.rerank",
    "InputError": "qwen3vl_vllm.errors",
    "MediaError": "qwen3vl_vllm.errors",
    "Qwen3VLError": "qwen3vl_vllm.errors",
    "APIError": "qwen3vl_vllm.errors",
    "JobError": "qwen3vl_vllm.errors",
    "register": "qwen3vl_vllm.serving.plugin",
    "run_index": "qwen3vl_vllm.index.job",
    "search": "qwen3vl_vllm.index.search",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qwen3vl_vllm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
