"""Serving configuration: YAML -> a frozen, validated dataclass.

Unknown keys and wrong types are rejected with the key's dotted name and what is allowed, so a
typo never silently falls back to a default. ``--set a.b=value`` overrides (value parsed as
YAML). ``model: builtin:tiny-embedding`` / ``builtin:tiny-reranker`` names the random test
checkpoints the project builds itself.

Example::

    from qwen3vl_vllm.ops.config import load_config
    cfg = load_config("configs/embedding-2b.yaml", overrides=["server.port=9000"])
    cfg.server.port          # 9000
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qwen3vl_vllm.media.budget import DEFAULT_IN_FLIGHT, DEFAULT_REQUEST_BYTES, DEFAULT_SECONDS
from qwen3vl_vllm.prompts.inputs import DEFAULT_SETTINGS
from qwen3vl_vllm.serving.body_pool import DEFAULT_IN_FLIGHT as DEFAULT_BODIES_IN_FLIGHT
from qwen3vl_vllm.serving.body_pool import DEFAULT_TIMEOUT_S as DEFAULT_BODY_TIMEOUT_S
from qwen3vl_vllm.serving.head_limit import DEFAULT_MAX_HEADER_BYTES
from qwen3vl_vllm.serving.head_limit import DEFAULT_TIMEOUT_S as DEFAULT_HEADER_TIMEOUT_S
from qwen3vl_vllm.serving.policy import DEFAULT_MAX_BODY_BYTES
from qwen3vl_vllm.serving.request_limits import (DEFAULT_MAX_ITEMS, DEFAULT_MAX_REQUEST_TEXT_CHARS,
                                                  DEFAULT_MAX_TEXT_CHARS)
from qwen3vl_vllm.serving.settings import KEEP_ALIVE_S
from qwen3vl_vllm.prompts.video_fit import (DEFAULT_MODE as VIDEO_FIT_DEFAULT,
                                            MODES as VIDEO_FIT_MODES)


class ConfigError(ValueError):
    """A config file or override is invalid. The message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "QWEN3VL_API_KEY"
    max_request_bytes: int = DEFAULT_MAX_BODY_BYTES
    # the bodies of all requests in flight together (503 + Retry-After above); 0: no limit
    max_request_bytes_in_flight: int = DEFAULT_BODIES_IN_FLIGHT
    body_timeout_s: int = DEFAULT_BODY_TIMEOUT_S  # waiting on a client for one body (408); 0: none
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # a request's line and headers (431); 0: none
    header_timeout_s: int = DEFAULT_HEADER_TIMEOUT_S  # first byte to end of headers (408); 0: none
    max_items_per_request: int = DEFAULT_MAX_ITEMS  # items in one request's lists; 0: no limit
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # characters in one text; 0: no limit
    # characters of text in one request, a rerank query once per document; 0: no limit
    max_request_text_chars: int = DEFAULT_MAX_REQUEST_TEXT_CHARS
    keep_alive_s: int = KEEP_ALIVE_S  # idle keep-alive; must outlive client pools (see settings)
    # pass `input` strings and token ids through untemplated (callers who build the reference
    # prompt themselves); per request: "raw_prompt": true
    raw_prompts: bool = False
    # a video whose prompt exceeds max_model_len: "fit" (fewer frames, evenly spread) or
    # "refuse" (a 400 naming the frame count that fits); see video_fit
    video_fit: str = VIDEO_FIT_DEFAULT
    # an embedding input longer than max_model_len: its first max_model_len tokens, as the
    # reference cuts it (true), or a 400 unless the request asks for the cut (false)
    truncate: bool = False


@dataclass(frozen=True)
class MediaConfig:
    images_per_prompt: int = 16
    videos_per_prompt: int = 2
    min_pixels: int = DEFAULT_SETTINGS.min_pixels
    max_pixels: int = DEFAULT_SETTINGS.max_pixels
    fps: float = DEFAULT_SETTINGS.fps
    max_frames: int = DEFAULT_SETTINGS.max_frames
    local_media_dir: str | None = None
    remote_fetch: bool = False
    allowed_domains: tuple[str, ...] = ()
    # decode limits (see ``budget``): decoded bytes per request, held by the whole API server
    # process at once, and decode time per request; 0 = no limit
    max_decoded_bytes_per_request: int = DEFAULT_REQUEST_BYTES
    max_decoded_bytes_in_flight: int = DEFAULT_IN_FLIGHT
    max_decode_seconds: float = DEFAULT_SECONDS


@dataclass(frozen=True)
class BatchingConfig:
    max_num_batched_tokens: int | None = None
    max_num_seqs: int = 64


@dataclass(frozen=True)
class ParallelConfig:
    data_parallel_size: int = 1
    tensor_parallel_size: int = 1
    # None: vLLM's one on CPU, the plugin's choice from the cores on GPU (settings.gpu_api_server_count)
    api_server_count: int | None = None


@dataclass(frozen=True)
class EngineConfig:
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    cpu_kvcache_gib: int | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeployConfig:
    image: str = "vllm/vllm-openai:v0.33.0"  # any of the tested vLLM releases (contract.TESTED)
    replicas: int = 1
    gpus: int | None = None  # default: data_parallel_size x tensor_parallel_size
    namespace: str = "default"
    package: str = "qwen3vl-vllm[gpu]"


@dataclass(frozen=True)
class ServeConfig:
    model: str
    kind: str = "auto"
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    # named embedding instructions, selected by a request's `instruction` field or a Cohere
    # `input_type` of the same name, e.g. {query: "Retrieve images that match the query"}
    instructions: dict[str, str] = field(default_factory=dict)


CHOICES = {
    "kind": ("auto", "embedding", "reranker"),
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "server.video_fit": VIDEO_FIT_MODES,
}
NON_NEGATIVE = {"media.max_decoded_bytes_per_request", "media.max_decoded_bytes_in_flight",
                "media.max_decode_seconds", "server.max_items_per_request",
                "server.max_text_chars", "server.max_request_text_chars",
                "server.max_request_bytes_in_flight", "server.body_timeout_s",
                "server.max_header_bytes", "server.header_timeout_s"}
POSITIVE = {"server.port", "server.max_request_bytes", "server.keep_alive_s", "media.min_pixels",
            "media.max_pixels", "media.fps", "media.max_frames", "batching.max_num_seqs", "max_model_len",
            "parallel.data_parallel_size", "parallel.tensor_parallel_size",
            "parallel.api_server_count", "batching.max_num_batched_tokens", "deploy.replicas"}


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(args[0])}"
    if typing.get_origin(tp) is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return {type(None): "null", str: "string", int: "integer", float: "number",
            bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            k_tp, v_tp = typing.get_args(tp)
            out = {}
            for k, v in value.items():
                name = _coerce(k, k_tp, f"{key} name")
                text = _coerce(v, v_tp, f"{key}.{k}")
                if isinstance(text, str) and not text.strip():
                    raise ConfigError(f"{key}.{k}: must not be empty")
                out[name] = text
            return out
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str = ""):
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        dotted = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {dotted}; allowed in {where}: {', '.join(names)}")
    values = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing (required)")
            continue
        value = _coerce(data[f.name], hints[f.name], key)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if key in POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key}: must be >= 0 (0: no limit), got {value}")
        values[f.name] = value
    return cls(**values)


def _set_dotted(data: dict, dotted: str, raw: str) -> None:
    import yaml

    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), *,
                data: dict | None = None) -> ServeConfig:
    """Read YAML (or take ``data``), apply ``key=value`` overrides, validate, freeze."""
    import yaml

    if data is None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. server.port=9000")
        _set_dotted(data, key.strip(), raw.strip())
    cfg = _build(ServeConfig, data)
    if not cfg.model.strip():
        raise ConfigError("model: must not be empty")
    if cfg.media.min_pixels > cfg.media.max_pixels:
        raise ConfigError("media.min_pixels must be <= media.max_pixels")
    return cfg


def to_dict(cfg: ServeConfig) -> dict:
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)
