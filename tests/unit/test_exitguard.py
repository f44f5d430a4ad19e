"""The exit guard keeps a script's own exit code (no engine needed to test it).

Each case runs a real script in a subprocess. ``exitguard.install()`` stands for creating an
engine. vLLM's exit-time abort (SIGABRT in a C++ destructor while the process exits) is
simulated by a C exit handler registered *before* the guard's, the way a C++ static object
registers its destructor (``__cxa_atexit``), which calls ``abort()``: C exit handlers run
last-registered first. With the guard the script's own code wins; without it the run fails (rc -6).
"""

import os
import subprocess
import sys
import textwrap

import pytest

ABORT_AT_EXIT = """
import ctypes
_libc = ctypes.CDLL(None)
_libc.__cxa_atexit.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
# registered the way a C++ static object registers its destructor; this one aborts
_libc.__cxa_atexit(ctypes.cast(_libc.abort, ctypes.c_void_p), None, None)
"""

SCRIPT = """
import atexit, os, sys
{abort}
import qwen3vl_vllm.offline.engines  # what a user script imports
from qwen3vl_vllm import exitguard

MARK = {mark!r}
atexit.register(lambda: open(MARK, "w").write("ran"))  # the script's own handler
LOG = open({log!r}, "w")  # left open and unflushed: Python flushes it at exit

def main():
    exitguard.install()  # what creating an engine does
    LOG.write("x" * 100000)
    {body}

if __name__ == "__main__":
    {entry}
"""

CASES = [
    ("return 0", "sys.exit(main())", 0),
    ("return 3", "sys.exit(main())", 3),
    ("raise RuntimeError('boom')", "sys.exit(main())", 1),
    ("print('done')", "main()", 0),
    ("sys.exit('fatal: message')", "main()", 1),
    ("raise SystemExit(4)", "main()", 4),
    ("raise SystemExit", "main()", 0),
    ("raise SystemExit(None)", "main()", 0),
    ("return 300", "raise SystemExit(main())", 300 & 0xFF),
    # a SystemExit caught and dropped does not decide the exit code
    ("try:\n        raise SystemExit(7)\n    except SystemExit:\n        pass", "main()", 0),
    ("try:\n        sys.exit(7)\n    except SystemExit:\n        pass\n    sys.exit(5)", "main()", 5),
]


def _script(tmp_path, body, entry, abort=True):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT.format(
        body=body, entry=entry, mark=str(tmp_path / "handler-ran"), log=str(tmp_path / "log.txt"),
        abort=ABORT_AT_EXIT if abort else "")))
    return path


@pytest.mark.parametrize("body,entry,code", CASES)
def test_exit_code_is_the_one_python_would_use(body, entry, code, tmp_path):
    path = _script(tmp_path, body, entry)
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stderr
    assert (tmp_path / "handler-ran").read_text() == "ran", "the script's own atexit handler must run"
    assert (tmp_path / "log.txt").read_text() == "x" * 100000, "Python's own flush of open files"


@pytest.mark.parametrize("body,entry,code", [CASES[0], CASES[1], CASES[5]])
def test_the_simulated_abort_fails_a_run_without_the_guard(body, entry, code, tmp_path):
    path = _script(tmp_path, body, entry)
    off = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "QWEN3VL_EXIT_GUARD": "0"})
    assert off.returncode == -6, (off.returncode, off.stderr[-500:])  # SIGABRT: the test can fail


def test_builtins_are_untouched(tmp_path):
    path = tmp_path / "b.py"
    path.write_text("import builtins, sys\nbefore = (builtins.SystemExit, sys.exit)\n"
                    "import qwen3vl_vllm.offline.engines\nfrom qwen3vl_vllm import exitguard\n"
                    "exitguard.install()\nassert (builtins.SystemExit, sys.exit) == before\n"
                    "try:\n    sys.exit(9)\nexcept SystemExit as e:\n"
                    "    assert type(e) is before[0] and e.code == 9\nprint('ok')\n")
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_ctrl_c_exits_130(tmp_path):
    """An uncaught KeyboardInterrupt ends the process by SIGINT as Python does: the shell's 130."""
    path = _script(tmp_path, "raise KeyboardInterrupt", "main()")
    res = subprocess.run(["bash", "-c", f'"{sys.executable}" "{path}"; echo "rc=$?"'],
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.strip().endswith("rc=130"), (res.stdout, res.stderr[-500:])


def test_unused_guard_changes_nothing(tmp_path):
    """Importing the package without creating an engine leaves the exit to Python."""
    path = tmp_path / "plain.py"
    path.write_text(ABORT_AT_EXIT + "import qwen3vl_vllm.offline.engines\nraise SystemExit(6)\n")
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == -6, res.stderr  # not armed: the simulated abort happens
