"""``Qwen3VLEmbedder`` and ``Qwen3VLReranker`` over ``vllm.LLM`` (``engines``)."""

from qwen3vl_vllm.offline.engines import Qwen3VLEmbedder, Qwen3VLReranker

__all__ = ["Qwen3VLEmbedder", "Qwen3VLReranker"]
