"""The command that installs one of trpo's extras (pyproject.toml's optional dependencies), for the errors that
need one. Standard library only: the command line's errors must not wait for torch."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

# The directory above the package: a checkout of the repository where it holds pyproject.toml (scripts/dev.py
# installs trpo from one, editable), site-packages otherwise.
SOURCE = Path(__file__).resolve().parent.parent


def install_hint(extra: str) -> str:
    """`PYTHON -m pip install 'trpo[EXTRA]'`, PYTHON being the interpreter running trpo: the Quick start calls
    `.venv/bin/trpo` without activating the venv, where a bare `pip` would install into another Python. From a
    checkout, the extra is installed from it (`-e 'CHECKOUT[EXTRA]'`), as scripts/dev.py installed trpo."""
    if (SOURCE / "pyproject.toml").is_file():
        target = f"-e {shlex.quote(f'{SOURCE}[{extra}]')}"
    else:
        target = shlex.quote(f"trpo[{extra}]")
    return f"{shlex.quote(sys.executable)} -m pip install {target}"
