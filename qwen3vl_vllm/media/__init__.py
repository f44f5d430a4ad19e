"""Where media bytes come from (``sources``, ``fetch``: policy and limits), what a request may
decode (``budget``), and how bytes become the reference's pixels (``decode``).

``qwen3vl_vllm.media`` was one module before the package had layers; its public names still
resolve here, from ``decode``, on first use."""

_SUBMODULES = ("budget", "decode", "fetch", "sources")


def __getattr__(name: str):
    if name.startswith("__") or name in _SUBMODULES:  # submodules: left to the import system
        raise AttributeError(name)
    import importlib

    decode = importlib.import_module("qwen3vl_vllm.media.decode")
    try:
        return getattr(decode, name)
    except AttributeError:
        raise AttributeError(f"module 'qwen3vl_vllm.media' has no attribute {name!r}") from None
