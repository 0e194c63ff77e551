"""`trpo plot`: learning curves from run directories' metrics.jsonl (and evaluations.jsonl: `eval/KEY` metrics).

Runs are grouped by env (one panel each, side by side) and by label (one line each: the mean over the group's
runs, with a band from their min to their max). The label is the run directory's name without its seed and
time-stamp parts (`runs/ppo-s3` -> `ppo`), or the values of config fields (`--label-by update_rule`).

Read-only on run directories: it reads metrics.jsonl, evaluations.jsonl and config.yaml as plain data (no
checkpoint, torch, trpo.config or env), and writes only the image at `out`.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trpo.checkpoint import EVALUATIONS
from trpo.errors import PlotError as PlotError  # defined there; importable here too
from trpo.logger import json_lines

EVAL_PREFIX = "eval/"  # as TensorBoard names the periodic evaluations' scalars


@dataclass
class Run:
    path: Path
    env: str
    label: str
    rows: list[dict[str, Any]]
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # evaluations.jsonl's rows (eval_every)


def _label(path: Path, config: dict[str, Any], label_by: list[str]) -> str:
    if label_by:
        return " ".join(f"{name}={config.get(name)}" for name in label_by)
    # runs/ENV-sSEED-YYYYMMDD-HHMMSS[-N] or any name ending in -sSEED, seedSEED or sSEED
    return re.sub(r"[-_]?(s|seed)\d+(-\d{8}-\d{6})?(-\d+)?$", "", path.name) or path.name


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:  # a directory, no permission, ...
        raise PlotError(f"cannot read {file}: {exc.strerror or exc}") from exc


def _number(value: Any) -> float | None:
    """A JSON value as a finite float; None for null, strings, bools, containers, NaN, the infinities and
    integers too large for a float: none of them is a point to plot."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _config(path: Path) -> dict[str, Any]:
    """The run's config.yaml ({} where there is none, or it is empty).

    One that cannot be read as a mapping, or whose `env` is not a string, is a PlotError naming it rather than a
    run plotted under 'unknown env': the panel and the --label-by fields come from it, and a guess would put the
    run's curve among the wrong runs without a word."""
    file = path / "config.yaml"
    if not file.exists():
        return {}
    try:
        text = _read(file).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlotError(f"{file} is not UTF-8") from exc
    try:
        config = yaml.safe_load(text)
    # ValueError: a date such as 2024-13-45 passes YAML's pattern but not datetime's check.
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PlotError(f"{file} is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise PlotError(f"{file} is not a YAML mapping")
    if not isinstance(config.get("env", ""), str | None):
        raise PlotError(f"{file}: env is not a string")
    return config


def load_runs(patterns: list[str], label_by: list[str] | None = None) -> list[Run]:
    """Run directories matching the paths or glob patterns (a directory holding run directories counts too).

    Lines of metrics.jsonl that are not an object with a finite numeric `step` are skipped (like a line cut short
    by a kill); the rows kept have that step as a float. A metrics.jsonl or config.yaml that cannot be read at
    all is a PlotError naming the file."""
    dirs: list[Path] = []
    for pattern in patterns:
        for match in sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else []):
            path = Path(match)
            if (path / "metrics.jsonl").exists():  # not is_file(): one that is a directory is reported, not skipped
                dirs.append(path)
            elif path.is_dir():
                dirs.extend(sorted(p.parent for p in path.glob("*/metrics.jsonl")))
    if not dirs:
        raise PlotError(f"no run directories (with a metrics.jsonl) match {' '.join(patterns)}")
    runs = []
    for path in dict.fromkeys(dirs):
        rows = _rows(path / "metrics.jsonl")
        if rows:
            config = _config(path)
            evaluations = _rows(path / EVALUATIONS) if (path / EVALUATIONS).exists() else []
            runs.append(Run(path, config.get("env") or "unknown env", _label(path, config, label_by or []), rows,
                            evaluations))
    if not runs:
        raise PlotError(f"the run directories matching {' '.join(patterns)} hold no metrics rows yet")
    return runs


def _rows(file: Path) -> list[dict[str, Any]]:
    """A JSON-lines log's rows that have a finite numeric `step` (as a float); other lines are skipped."""
    rows = []
    for _, row in json_lines(_read(file)):
        step = _number(row.get("step")) if isinstance(row, dict) else None
        if step is not None:
            rows.append({**row, "step": step})
    return rows


def _series(run: Run, metric: str) -> tuple[list[dict[str, Any]], str]:
    """The rows a metric is read from and its key in them: `eval/KEY` (TensorBoard's name) is evaluations.jsonl's
    KEY, any other name a metrics.jsonl key."""
    return (run.evaluations, metric[len(EVAL_PREFIX):]) if metric.startswith(EVAL_PREFIX) else (run.rows, metric)


def curves(runs: list[Run], metric: str, points: int = 100) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """env -> label -> (env steps, values [runs, grid]): each run's metric interpolated onto the group's env
    steps (at most `points` of them, evenly spaced; NaN before a run's first value and after its last step).
    `eval/mean_return` and the other `eval/KEY` metrics are the periodic evaluations (evaluations.jsonl)."""
    if metric.startswith(EVAL_PREFIX) and not any(run.evaluations for run in runs):
        raise PlotError(f"{metric!r} comes from periodic evaluations, and none of these runs has any "
                        "(evaluations.jsonl: trpo train --eval-every N)")
    available = set().union(*(row.keys() for run in runs for row in run.rows))
    available |= {EVAL_PREFIX + key for run in runs for row in run.evaluations for key, value in row.items()
                  if key not in ("step", "update") and _number(value) is not None}  # not the lists of returns
    if metric not in available:
        # repr for a hand-edited name holding a line break or escape sequence: the message stays one line
        logged = ", ".join(name if name.isprintable() else repr(name) for name in sorted(available))
        raise PlotError(f"no run logs the metric {metric!r}; logged: {logged}")
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for env in dict.fromkeys(run.env for run in runs):
        for label in dict.fromkeys(run.label for run in runs if run.env == env):
            group = [run for run in runs if run.env == env and run.label == label]
            steps = np.unique([row["step"] for run in group for row in _series(run, metric)[0]])
            if not len(steps):
                continue  # no run of this group evaluated
            grid = steps if len(steps) <= points else np.linspace(steps[0], steps[-1], points)
            values = []
            for run in group:
                rows, key = _series(run, metric)
                # sorted: np.interp needs increasing steps, and a hand-edited log may not have them
                pts = sorted((row["step"], value) for row in rows if (value := _number(row.get(key))) is not None)
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
