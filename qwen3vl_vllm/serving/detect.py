"""Which checkpoints the package serves: ``detect_kind(model) -> "embedding" | "reranker" | None``.

Its own small module, free of vLLM imports, so the plugin, its hooks, the offline API and the
launcher all ask the same question the same way (and nothing imports the plugin for it).

Rule, first match wins:

- ``QWEN3VL_VLLM_KIND=embedding|reranker|none`` in the environment;
- a local checkpoint whose config.json is not ``model_type: qwen3_vl`` -> untouched;
- config.json field ``qwen3vl_vllm_kind`` (written by ``make-checkpoint``);
- the model name or path contains ``Qwen3-VL-Embedding`` / ``Qwen3-VL-Reranker``
  (case-insensitive), as the published checkpoints' names do.

Example::

    >>> detect_kind("Qwen/Qwen3-VL-Embedding-2B")
    'embedding'
    >>> detect_kind("Qwen/Qwen3-VL-2B-Instruct") is None
    True
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

KIND_ENV = "QWEN3VL_VLLM_KIND"
KIND_FIELD = "qwen3vl_vllm_kind"
_NAME_RULES = (
    (re.compile(r"qwen3[-_]?vl[-_]?embedding", re.I), "embedding"),
    (re.compile(r"qwen3[-_]?vl[-_]?reranker", re.I), "reranker"),
)


def detect_kind(model: str | os.PathLike | None) -> str | None:
    """'embedding', 'reranker' or None (leave the model alone)."""
    env = os.environ.get(KIND_ENV, "").strip().lower()
    if env in ("embedding", "reranker"):
        return env
    if env in ("none", "off", "0"):
        return None
    if not model:
        return None
    model = os.fspath(model)
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            return None
        if data.get("model_type") != "qwen3_vl":
            return None
        if data.get(KIND_FIELD) in ("embedding", "reranker"):
            return data[KIND_FIELD]
        if data.get(KIND_FIELD) is not None:
            return None
    for pattern, kind in _NAME_RULES:
        if pattern.search(model):
            return kind
    return None
