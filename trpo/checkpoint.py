"""Run directories and checkpoints: atomic writes (a killed run never leaves a half-written file), loads with
clear errors, and the rules that keep two runs from mixing in one directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

FORMAT = "trpo-checkpoint-v1"
LATEST = Path("checkpoints") / "latest.pt"
FINAL = Path("final.pt")
# Everything a run writes into its directory (and all that --overwrite removes: other files are left alone).
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "final.pt", "eval.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a trpo checkpoint; the message names the file."""


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it holds another run, or is not a directory)."""


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds (part of) a run: any of the files a run writes."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def prepare_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Make `run_dir` ready for a run that starts from update 0: refuse one that holds a run unless `overwrite`,
    which first removes that run's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    if holds_run(run_dir):
        if not overwrite:
            raise RunDirError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or start over "
                              "with --overwrite (API: TRPO.resume(run_dir), or overwrite=True)")
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def unique_run_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that did not exist, created here (mkdir is atomic, so two
    runs started in the same second never share one)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"no free run directory name next to {base}")


def _replace_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path` (atomic on POSIX): a
    killed run leaves the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file (config.yaml, metrics.jsonl, eval.json) all at once."""
    _replace_atomically(path, lambda fh: fh.write(text.encode("utf-8")))


def save_atomic(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a checkpoint all at once."""
    _replace_atomically(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain data only: torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trpo checkpoint")
    return state


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file as given, or for a run directory its newest state: checkpoints/latest.pt (also written
    at the end of every learn()), else final.pt."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / LATEST, path / FINAL):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no checkpoint in run directory {path} (looked for {FINAL} and {LATEST})")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
