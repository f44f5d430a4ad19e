"""The exit guard keeps a script's own exit code (no engine needed to test it).

Each case runs a real script in a subprocess. ``exitguard.install()`` stands for creating an
engine; ``os.abort()`` registered *before* the guard's handler would run stands for vLLM's
exit-time abort (SIGABRT, rc 134): with the guard, the script's own code wins.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import atexit, os, sys
import qwen3vl_vllm.offline  # registers the guard's handler, as a user script's import does
from qwen3vl_vllm import exitguard

MARK = {mark!r}
atexit.register(lambda: open(MARK, "w").write("ran"))  # the script's own handler

def main():
    exitguard.install()  # what creating an engine does
    {body}

if __name__ == "__main__":
    {entry}
"""


@pytest.mark.parametrize("body,entry,code", [
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
])
def test_exit_code_is_the_one_python_would_use(body, entry, code, tmp_path):
    mark = tmp_path / "handler-ran"
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT.format(body=body, entry=entry, mark=str(mark))))
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stderr
    assert mark.read_text() == "ran", "the script's own atexit handler must still run"


ABORTING = """
import atexit, os, sys
import qwen3vl_vllm.offline
from qwen3vl_vllm import exitguard
exitguard.install()
# an abort during interpreter teardown, as vLLM's: it comes after every atexit handler
class Bomb:
    def __del__(self):
        os.abort()
sys.modules["__bomb__"] = Bomb()  # destroyed when modules are torn down, after atexit
{entry}
"""


@pytest.mark.parametrize("entry,code", [("sys.exit(0)", 0), ("raise SystemExit(3)", 3), ("pass", 0)])
def test_guard_wins_over_an_abort_at_teardown(entry, code, tmp_path):
    path = tmp_path / "aborting.py"
    path.write_text(ABORTING.format(entry=entry))
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == code, (res.returncode, res.stderr)
    guard_off = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                               timeout=60, env={**__import__("os").environ, "QWEN3VL_EXIT_GUARD": "0"})
    assert guard_off.returncode != code, "the simulated abort must be able to fail the run"


def test_unused_guard_changes_nothing(tmp_path):
    """Importing the package without creating an engine leaves the exit to Python."""
    path = tmp_path / "plain.py"
    path.write_text("import qwen3vl_vllm.offline\nraise SystemExit(6)\n")
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 6, res.stderr
