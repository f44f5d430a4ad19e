"""Index a corpus and search it: ``run_index`` (``job``) and ``search`` (``search``).

Layer: uses the offline API and the clients, never the serving internals. Heavy imports
(pyarrow, vLLM, Ray, LanceDB) happen inside the functions.

Example::

    from qwen3vl_vllm.index import run_index, search
    run_index("photos/", model="Qwen/Qwen3-VL-Embedding-2B", out="photos.index")
    for hit in search("photos.index", text="a red bicycle", k=5):
        print(hit.rank, hit.id, hit.score)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_index": "qwen3vl_vllm.index.job",
    "IndexSummary": "qwen3vl_vllm.index.job",
    "JobSettings": "qwen3vl_vllm.index.backends",
    "search": "qwen3vl_vllm.index.search",
    "Hit": "qwen3vl_vllm.index.search",
}
_SUBMODULES = ("backends", "job", "parts", "plan", "ray_backend", "search", "source", "store")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None or name in _SUBMODULES:
        raise AttributeError(f"module 'qwen3vl_vllm.index' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
