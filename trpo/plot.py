"""`trpo plot`: learning curves from run directories' metrics.jsonl.

Runs are grouped by env (one panel each, side by side) and by label (one line each: the mean over the group's
runs, with a band from their min to their max). The label is the run directory's name without its seed and
time-stamp parts (`runs/ppo-s3` -> `ppo`), or the values of config fields (`--label-by update_rule`).
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class PlotError(ValueError):
    """Nothing to plot, or not what was asked; the message says which."""


@dataclass
class Run:
    path: Path
    env: str
    label: str
    rows: list[dict[str, Any]]


def _label(path: Path, config: dict[str, Any], label_by: list[str]) -> str:
    if label_by:
        return " ".join(f"{name}={config.get(name)}" for name in label_by)
    # runs/ENV-sSEED-YYYYMMDD-HHMMSS[-N] or any name ending in -sSEED, seedSEED or sSEED
    return re.sub(r"[-_]?(s|seed)\d+(-\d{8}-\d{6})?(-\d+)?$", "", path.name) or path.name


def load_runs(patterns: list[str], label_by: list[str] | None = None) -> list[Run]:
    """Run directories matching the paths or glob patterns (a directory holding run directories counts too)."""
    dirs: list[Path] = []
    for pattern in patterns:
        for match in sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else []):
            path = Path(match)
            if (path / "metrics.jsonl").is_file():
                dirs.append(path)
            elif path.is_dir():
                dirs.extend(sorted(p.parent for p in path.glob("*/metrics.jsonl")))
    if not dirs:
        raise PlotError(f"no run directories (with a metrics.jsonl) match {' '.join(patterns)}")
    runs = []
    for path in dict.fromkeys(dirs):
        config_file = path / "config.yaml"
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        rows = []
        for line in (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        if rows:
            env = (config or {}).get("env") or "unknown env"
            runs.append(Run(path, str(env), _label(path, config or {}, label_by or []), rows))
    if not runs:
        raise PlotError(f"the run directories matching {' '.join(patterns)} hold no metrics rows yet")
    return runs


def curves(runs: list[Run], metric: str, points: int = 100) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """env -> label -> (env steps, values [runs, grid]): each run's metric interpolated onto the group's env
    steps (at most `points` of them, evenly spaced; NaN before a run's first value and after its last step)."""
    available = set().union(*(row.keys() for run in runs for row in run.rows))
    if metric not in available:
        raise PlotError(f"no run logs the metric {metric!r}; logged: {', '.join(sorted(available))}")
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for env in dict.fromkeys(run.env for run in runs):
        for label in dict.fromkeys(run.label for run in runs if run.env == env):
            group = [run for run in runs if run.env == env and run.label == label]
            steps = np.unique([row["step"] for run in group for row in run.rows])
            grid = steps if len(steps) <= points else np.linspace(steps[0], steps[-1], points)
            values = []
            for run in group:
                pts = [(row["step"], row[metric]) for row in run.rows
                       if isinstance(row.get(metric), int | float) and not isinstance(row.get(metric), bool)]
                if pts:
                    xs, ys = (np.asarray(v, dtype=float) for v in zip(*pts, strict=True))
                    values.append(np.interp(grid, xs, ys, left=np.nan, right=np.nan))
            if values:
                out.setdefault(env, {})[label] = (grid, np.array(values))
    if not out:
        raise PlotError(f"no run has a value of {metric!r} to plot")
    return out


def plot(runs: list[Run], out: str | Path, metric: str = "episode_return_mean") -> Path:
    """Draw one panel per env, one line (mean) and band (min to max) per label; write an image to `out`."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    data = curves(runs, metric)
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points where no run of a group has a value yet
        for ax, (env, groups) in zip(axes[0], data.items(), strict=True):
            for label, (grid, values) in groups.items():
                marker = "o" if len(grid) <= 20 else None  # a few updates: show the points themselves
                mean = np.nanmean(values, axis=0)
                line = ax.plot(grid, mean, marker=marker, label=f"{label} ({len(values)} runs)")[0]
                if len(values) > 1:
                    ax.fill_between(grid, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                    color=line.get_color(), alpha=0.15)
            ax.set_title(env)
            ax.set_xlabel("env steps")
            ax.set_ylabel(metric)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=110)
    except ValueError as exc:  # an image format matplotlib does not write
        raise PlotError(f"cannot write {out}: {exc}") from exc
    finally:
        plt.close(fig)
    return out
