"""The install hints of the errors that need an extra: they name the pip of the Python running trpo (the Quick start
calls .venv/bin/trpo without activating the venv), and an env whose package is missing names trpo's extra."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trpo import extras
from trpo.envs import missing_dependency
from trpo.extras import install_hint

ROOT = Path(__file__).resolve().parent.parent


def test_from_a_checkout_the_hint_installs_the_extra_from_it_with_this_interpreter() -> None:
    assert extras.SOURCE == ROOT  # the tests run on an editable install of this checkout
    assert shlex.split(install_hint("mujoco")) == [sys.executable, "-m", "pip", "install", "-e", f"{ROOT}[mujoco]"]


def test_an_installed_package_names_its_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(extras, "SOURCE", tmp_path)  # site-packages: no pyproject.toml beside the package
    assert shlex.split(install_hint("video")) == [sys.executable, "-m", "pip", "install", "trpo[video]"]


def test_a_path_with_spaces_stays_one_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    checkout = tmp_path / "my projects" / "trpo"
    checkout.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(extras, "SOURCE", checkout)
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python")
    assert shlex.split(install_hint("tune")) == ["/opt/my python/bin/python", "-m", "pip", "install", "-e",
                                                  f"{checkout}[tune]"]


def test_a_missing_mujoco_is_one_line_naming_trpos_extra(tmp_path: Path) -> None:
    # Gymnasium raises DependencyNotInstalled naming its own extra and a bare pip; trpo names the command that works.
    code = ("import sys; sys.modules['mujoco'] = None; from trpo.cli import main; "  # as if mujoco were not installed
            f"sys.exit(main(['train', '--env', 'Hopper-v5', '--run-dir', {str(tmp_path / 'run')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"trpo: error: cannot make environment 'Hopper-v5': MuJoCo is not installed: {install_hint('mujoco')}"]


def test_a_missing_package_trpo_has_no_extra_for_is_said_as_gymnasium_says_it() -> None:
    from gymnasium.error import DependencyNotInstalled

    box2d = DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')
    assert missing_dependency(box2d) == f"Box2D is not installed: {install_hint('box2d')}"
    other = DependencyNotInstalled('pygame is not installed, run `pip install "gymnasium[classic-control]"`')
    assert missing_dependency(other) == 'pygame is not installed, run `pip install "gymnasium[classic-control]"`'
