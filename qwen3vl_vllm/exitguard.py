"""Keep the vLLM exit-time abort (SPEC §4) from turning a finished script's exit code non-zero.

vLLM 0.32 processes sometimes die with SIGABRT ("terminate called without an active
exception") *after* all work is done: C++ objects holding running threads are destroyed while
the process exits. Once an engine exists (``install()``), the guard arms, as the very last step
of Python's shutdown, a C-level exit handler (glibc's ``on_exit``) that ends the process with
``_exit(status)``, where ``status`` is exactly what Python passed to ``exit()``. So:

- the exit code is Python's own, with nothing replaced or tracked: ``sys.exit(n)``,
  ``raise SystemExit(n)``, 1 for an uncaught exception, 120 when flushing stdout fails; a
  ``SystemExit`` the program catches changes nothing, and ``builtins.SystemExit`` is untouched;
- everything Python does at exit still happens first: ``atexit`` handlers (the script's and
  vLLM's, in any order), flushing and closing files, module teardown; C stdio is flushed too;
- only what runs after that is skipped: the C++ static destructors, where the abort happens;
- Ctrl-C still ends the process by SIGINT, as Python does (the shell reports 130).

On a libc without ``on_exit`` (not glibc) the guard does nothing. ``QWEN3VL_EXIT_GUARD=0``
turns it off.

Example::

    from qwen3vl_vllm import Qwen3VLEmbedder
    with Qwen3VLEmbedder(path) as model:       # creating an engine arms the guard
        ...
    raise SystemExit(3)                         # the process exits 3, even if vLLM aborts later
"""

from __future__ import annotations

import atexit
import os

_STATE: dict = {"installed": False, "armed": False}


def _libc():
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "on_exit") and hasattr(libc, "_exit") else None
    except OSError:  # pragma: no cover - no C library to load
        return None


def _arm() -> None:
    """Python's last word at exit (an ``atexit`` handler): register ``_exit`` with ``on_exit``,
    which glibc runs before the exit handlers registered earlier, the C++ destructors among
    them. ``_exit(int)`` is called as ``fn(status, arg)``: the status is its argument."""
    import ctypes

    libc = _libc()
    if libc is None or _STATE["armed"]:
        return
    libc.fflush(None)  # C stdio buffers: _exit would drop them
    libc.on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.on_exit.restype = ctypes.c_int
    if libc.on_exit(ctypes.cast(libc._exit, ctypes.c_void_p), None) == 0:
        _STATE["armed"] = True


def install() -> bool:
    """Arm the guard for this process (an engine exists); True when it will act."""
    if os.environ.get("QWEN3VL_EXIT_GUARD", "1") == "0" or _libc() is None:
        return False
    if not _STATE["installed"]:
        _STATE["installed"] = True
        atexit.register(_arm)
    return True
