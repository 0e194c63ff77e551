"""Checkpoints: atomic writes (a killed run never leaves a half-written file), loads with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "trpo-checkpoint-v1"
LATEST = Path("checkpoints") / "latest.pt"
FINAL = Path("final.pt")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a trpo checkpoint; the message names the file."""


def save_atomic(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    """A checkpoint file as given, or for a run directory its final.pt, else its checkpoints/latest.pt."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / FINAL, path / LATEST):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"no checkpoint in run directory {path} (looked for {FINAL} and {LATEST})")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
