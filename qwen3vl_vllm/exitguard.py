"""Keep the vLLM exit-time abort (SPEC §4) from turning a finished script's exit code non-zero.

vLLM 0.32 processes sometimes die with SIGABRT ("terminate called without an active
exception") *after* all work is done, while C++ threads are torn down at interpreter exit.
``install()`` (called when an engine is created) registers an ``atexit`` handler that flushes
stdio and leaves with ``os._exit(code)`` before that teardown runs. The code is the one the
script asked for: ``sys.exit(n)`` is remembered, an uncaught exception gives 1, else 0.

``sys.exit`` is wrapped (to remember ``n``) as soon as ``qwen3vl_vllm.offline`` is imported, so
the usual ``sys.exit(main())`` -- which looks ``sys.exit`` up before ``main()`` runs -- keeps its
code. A bare ``raise SystemExit(n)`` is not seen: use ``sys.exit(n)``.
Set ``QWEN3VL_EXIT_GUARD=0`` to turn it off.
"""

from __future__ import annotations

import atexit
import os
import sys

_STATE = {"installed": False, "code": None}


def _remember_exit(original):
    def exit(code=0):  # noqa: A001 - mirrors sys.exit
        _STATE["code"] = code
        original(code)

    exit._qwen3vl_original = original
    return exit


def _code() -> int:
    code = _STATE["code"]
    if code is None:
        if getattr(sys, "last_value", None) is not None and not isinstance(sys.last_value, SystemExit):
            return 1
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1  # sys.exit("message") prints the message and exits 1


def _final() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(_code())


def record_exit_codes() -> None:
    """Wrap ``sys.exit`` so the guard knows the code a script exits with (idempotent)."""
    if os.environ.get("QWEN3VL_EXIT_GUARD", "1") != "0" and not hasattr(sys.exit, "_qwen3vl_original"):
        sys.exit = _remember_exit(sys.exit)


def install() -> bool:
    """Install once per process; returns True when active."""
    if os.environ.get("QWEN3VL_EXIT_GUARD", "1") == "0":
        return False
    if _STATE["installed"]:
        return True
    _STATE["installed"] = True
    record_exit_codes()
    atexit.register(_final)
    return True
