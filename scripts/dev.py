#!/usr/bin/env python3
"""Set up a virtual environment for trpo and, optionally, run the test suite. Needs only Python >= 3.10 + pip.

    python3 scripts/dev.py setup     # .venv with trpo installed (editable); then `.venv/bin/trpo train`
    python3 scripts/dev.py test      # .venv with the test extras, then ruff and the whole pytest suite
    python3 scripts/dev.py docs      # .venv with the docs extra, then the site at http://127.0.0.1:8000

PyTorch is installed first, so that trpo's own `torch` range is already satisfied (`torch_install`):
- with an NVIDIA GPU (`nvidia-smi -L` works): the default build from the default index (with CUDA);
- without one: the CPU build (pinned to a version known to work here) from PyTorch's own CPU wheel index, so that
  pip never pulls the multi-GB CUDA build; where that index cannot be reached, from the default index instead, with
  one line saying so (on Linux that may be the CUDA build, unless the default index has the CPU one, as here);
- TRPO_TORCH_INDEX_URL set: from that index, whatever the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
CPU_TORCH = "torch==2.13.0"
GPU_TORCH = "torch>=2.4,<3"  # trpo's own range: the default index's newest build
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def index_reachable(url: str, timeout: float = 10.0) -> bool:
    """Whether a package index answers at all (any HTTP status counts: the server is there)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # no network, no such host, refused, timed out
        return False
    return True


def torch_install() -> tuple[list[str], str | None]:
    """pip's arguments for installing torch on this machine, and a line to print about the choice (or None)."""
    index = os.environ.get("TRPO_TORCH_INDEX_URL")
    if index:
        return ["torch", "--index-url", index], None
    if has_gpu():
        return [GPU_TORCH], None
    if index_reachable(f"{CPU_INDEX}/torch/"):
        return [CPU_TORCH, "--index-url", CPU_INDEX], None
    return [CPU_TORCH], (f"dev.py: PyTorch's CPU wheel index ({CPU_INDEX}) cannot be reached; installing {CPU_TORCH} "
                         "from the default index instead (set TRPO_TORCH_INDEX_URL to choose an index)")


def torch_installed(py: Path) -> bool:
    return subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0


def setup(extras: str) -> Path:
    if not venv_python().exists():
        print(f"+ creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = venv_python()
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not torch_installed(py):
        args, note = torch_install()
        if note:
            print(note, flush=True)
        run(*pip, *args)
    run(*pip, "-e", f".[{extras}]" if extras else ".")
    return py


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "setup"
    if command == "setup":
        setup("")
        print(f"ready: {VENV / 'bin' / 'trpo'} train", flush=True)
        return 0
    if command == "test":
        py = setup("test")
        run(py, "-m", "ruff", "check", "trpo", "tests", "scripts", "benchmarks")
        # pytest's own exit code is the result; -n 2 spreads the suite over both cores, keeping each xdist_group
        # (the Ray tests, which share one Ray runtime) on one of them; the 15 slowest tests are listed at the end,
        # to see where the suite's time goes (it must stay under 10 minutes on 2 cores).
        return subprocess.run([str(py), "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--durations=15",
                               *sys.argv[2:]],
                              cwd=ROOT).returncode
    if command == "docs":
        py = setup("docs")
        return subprocess.run([str(py), "-m", "mkdocs", "serve", *sys.argv[2:]], cwd=ROOT).returncode
    sys.exit(f"usage: {sys.argv[0]} [setup|test|docs] [pytest or mkdocs serve args]")


if __name__ == "__main__":
    sys.exit(main())
