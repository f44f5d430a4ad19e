"""Keep the vLLM exit-time abort (SPEC §4) from turning a finished script's exit code non-zero.

vLLM 0.32 processes sometimes die with SIGABRT ("terminate called without an active
exception") *after* all work is done, while C++ threads are torn down at interpreter exit.
Once an engine exists (``install()``), an ``atexit`` handler flushes stdio and logging and leaves
with ``os._exit(code)`` before that teardown runs, where ``code`` is the one Python would have
used:

- ``sys.exit(n)`` and ``raise SystemExit(n)``: ``n`` (None -> 0, other objects -> 1, printed by
  Python as usual). Both are seen: ``builtins.SystemExit`` (and ``sys.exit``) raise a subclass
  that reports its code when the interpreter's top-level handling frees it, so a SystemExit that
  was caught and dropped inside the program does not count;
- an uncaught exception: 1;
- otherwise 0.

The handler is registered when ``qwen3vl_vllm.offline`` is imported, so it runs *after* every
``atexit`` handler registered later (the script's own, vLLM's): atexit runs handlers last-in,
first-out. Handlers registered before that import are the only ones it cannot wait for.
Set ``QWEN3VL_EXIT_GUARD=0`` to turn it off.

Example::

    from qwen3vl_vllm import Qwen3VLEmbedder   # registers the handler (inactive until an engine)
    with Qwen3VLEmbedder(path) as model:       # activates it
        ...
    raise SystemExit(3)                         # the process exits 3, even if vLLM aborts later
"""

from __future__ import annotations

import atexit
import builtins
import os
import sys

_STATE: dict = {"registered": False, "installed": False, "exit": None}
_ORIGINAL = builtins.SystemExit


class _TrackedSystemExit(_ORIGINAL):
    """``SystemExit`` that reports its code when the interpreter's top-level handling drops it.

    Python reads the code of an uncaught SystemExit, frees the exception and only then
    finalizes (atexit). At that moment no Python frame is running, which tells it apart from a
    SystemExit that was caught and dropped inside the program (then a frame is running).
    """

    def __del__(self):
        try:
            sys._getframe(1)
        except ValueError:  # no caller: freed by the interpreter's top-level exit handling
            _STATE["exit"] = (self.code,)


_TrackedSystemExit.__name__ = _TrackedSystemExit.__qualname__ = "SystemExit"
_TrackedSystemExit.__module__ = "builtins"


def _exit(code=None):  # the replacement for sys.exit: raises the tracked class
    raise _TrackedSystemExit(code)


def _python_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    if isinstance(code, bool):
        return int(code)
    return 1  # Python prints a non-integer code to stderr and exits 1


def exit_code() -> int:
    """The code Python would exit with now (see module docstring)."""
    if _STATE["exit"] is not None:
        return _python_code(_STATE["exit"][0])
    last = getattr(sys, "last_value", None)
    if last is not None and not isinstance(last, _ORIGINAL):
        return 1
    return 0


def _final() -> None:
    if not _STATE["installed"]:
        return  # no engine was created: a normal interpreter exit
    try:
        import logging

        logging.shutdown()
    except Exception:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(exit_code())


def record_exit_codes() -> None:
    """Track exit codes and register the final handler early (idempotent)."""
    if os.environ.get("QWEN3VL_EXIT_GUARD", "1") == "0" or _STATE["registered"]:
        return
    _STATE["registered"] = True
    builtins.SystemExit = _TrackedSystemExit
    sys.exit = _exit
    atexit.register(_final)


def install() -> bool:
    """Activate the guard (an engine exists); returns True when active."""
    if os.environ.get("QWEN3VL_EXIT_GUARD", "1") == "0":
        return False
    record_exit_codes()
    _STATE["installed"] = True
    return True
