#!/usr/bin/env python3
"""Set up a virtual environment for trpo and, optionally, run the test suite. Needs only Python >= 3.10 + pip.

    python3 scripts/dev.py setup     # .venv with trpo installed (editable); then `.venv/bin/trpo train`
    python3 scripts/dev.py test      # .venv with the test extras, then ruff, mypy, the whole pytest suite, and
                                     # its numerics tests again with other CPU kernels forced (kernel_variants)
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
import platform
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


def kernel_variants(py: Path) -> dict[str, dict[str, str]]:
    """Environment variables that make torch (ATen's vectorized kernels, MKL, oneDNN) and numpy (OpenBLAS, and
    numpy's own SIMD loops) run other kernels than they pick on this CPU. Each caps the instruction set, so all are
    safe on any x86-64 CPU. With the suite's own run (this CPU's kernels: AVX-512 ones where it has them), that is
    three kernel sets. Other architectures: none (these names are x86's)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    # numpy's dispatched SIMD targets (X86_V3 = AVX2, X86_V4 and AVX512_* = AVX-512), read from the numpy installed.
    listed = subprocess.run([str(py), "-c", "from numpy._core._multiarray_umath import __cpu_dispatch__ as d; "
                             "print(' '.join(d))"], capture_output=True, text=True).stdout.split()
    above_avx2 = [name for name in listed if name == "X86_V4" or name.startswith("AVX512")]
    return {
        "generic kernels": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                            "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Prescott",
                            "NPY_DISABLE_CPU_FEATURES": " ".join(listed)},
        "AVX2 kernels": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                         "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
                         "NPY_DISABLE_CPU_FEATURES": " ".join(above_avx2)},
    }


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "setup"
    if command == "setup":
        setup("")
        print(f"ready: {VENV / 'bin' / 'trpo'} train", flush=True)
        return 0
    if command == "test":
        py = setup("test")
        run(py, "-m", "ruff", "check", "trpo", "tests", "scripts", "benchmarks")
        # The package's types ([tool.mypy] in pyproject.toml: the math and the seams strict, the rest at mypy's
        # default level); its cache in .mypy_cache makes a second run take seconds.
        print("+", py, "-m", "mypy", flush=True)
        if subprocess.run([str(py), "-m", "mypy"], cwd=ROOT).returncode != 0:
            print("dev.py: mypy found type errors in trpo/ (listed above); fix them before the tests run "
                  "([tool.mypy] in pyproject.toml says what is checked how)", file=sys.stderr, flush=True)
            return 1
        # -n 2 spreads the suite over both cores, keeping each xdist_group (the Ray tests, which share one Ray
        # runtime) on one of them; the 15 slowest tests are listed at the end, to see where the suite's time goes
        # (it must stay under 8 minutes on 2 cores).
        pytest = [str(py), "-m", "pytest", "-n", "2", "--dist", "loadgroup"]
        code = subprocess.run([*pytest, "--durations=15", *sys.argv[2:]], cwd=ROOT).returncode
        if code != 0 or len(sys.argv) > 2:  # a failure, or a chosen subset: that run is the answer
            return code
        # The tests whose floats go through kernels that numpy and torch pick per CPU, again with other kernels
        # forced, as a user's machine may pick them: they must hold on any CPU, not only on this one.
        for name, variables in kernel_variants(py).items():
            print(f"+ the numerics tests with {name}: {' '.join(f'{k}={v}' for k, v in variables.items())}",
                  flush=True)
            code = subprocess.run([*pytest, "-q", "-m", "numerics"], cwd=ROOT,
                                  env={**os.environ, **variables}).returncode
            if code != 0:
                return code
        return 0
    if command == "docs":
        py = setup("docs")
        return subprocess.run([str(py), "-m", "mkdocs", "serve", *sys.argv[2:]], cwd=ROOT).returncode
    sys.exit(f"usage: {sys.argv[0]} [setup|test|docs] [pytest or mkdocs serve args]")


if __name__ == "__main__":
    sys.exit(main())
