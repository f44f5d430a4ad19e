"""The exit guard keeps a script's own exit code (no engine needed to test it)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import sys
import qwen3vl_vllm.offline  # wraps sys.exit, as a user script's import does
from qwen3vl_vllm import exitguard

def main():
    exitguard.install()  # what creating an engine does
    {body}

if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize("body,code", [
    ("return 0", 0),
    ("return 3", 3),
    ("raise RuntimeError('boom')", 1),
    ("print('done')", 0),
    ("sys.exit('fatal: message')", 1),
])
def test_exit_code_is_the_scripts(body, code, tmp_path):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT.format(body=body)))
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stderr
