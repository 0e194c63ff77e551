#!/usr/bin/env python3
"""Set up a virtual environment for trpo and, optionally, run the test suite. Needs only Python >= 3.10 + pip.

    python3 scripts/dev.py setup     # .venv with trpo installed (editable); then `.venv/bin/trpo train`
    python3 scripts/dev.py test      # .venv with the test extras, then ruff and the whole pytest suite

PyTorch: where no NVIDIA GPU is visible, the CPU build is installed first (pinned to a version known to work
here), so that trpo's own `torch` range is already satisfied and pip never pulls a multi-GB CUDA build.
Set TRPO_TORCH_INDEX_URL to install torch from another index (e.g. PyTorch's CPU wheel index elsewhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
CPU_TORCH = "torch==2.13.0"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def torch_installed(py: Path) -> bool:
    return subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0


def setup(extras: str) -> Path:
    if not venv_python().exists():
        print(f"+ creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = venv_python()
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not torch_installed(py):
        index = os.environ.get("TRPO_TORCH_INDEX_URL")
        if index:
            run(*pip, "torch", "--index-url", index)
        elif has_gpu():
            run(*pip, "torch>=2.4,<3")
        else:
            run(*pip, CPU_TORCH)
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
        # (the Ray tests, which share one Ray runtime) on one of them.
        return subprocess.run([str(py), "-m", "pytest", "-n", "2", "--dist", "loadgroup", *sys.argv[2:]],
                              cwd=ROOT).returncode
    sys.exit(f"usage: {sys.argv[0]} [setup|test] [pytest args]")


if __name__ == "__main__":
    sys.exit(main())
