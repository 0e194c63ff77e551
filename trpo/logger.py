"""Run outputs: metrics.jsonl (one JSON object per policy update), TensorBoard events, progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any

from trpo.checkpoint import write_text_atomic

# Fields that measure time: they differ between otherwise identical runs.
TIMING_FIELDS = ("fps", "time_rollout", "time_policy", "time_value", "time_elapsed")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "not defined for this update"
    return value


class MetricsLog:
    """Appends one line per update to metrics.jsonl (flushed each time) and mirrors scalars to TensorBoard.

    keep_updates: rows of a resumed run's earlier life to keep (those up to its checkpoint); the rows after it,
    and their TensorBoard events, are dropped, because the resumed run writes those updates again."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_updates: int = 0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        last_step = self._truncate(keep_updates) if self.path.exists() else None
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                SummaryWriter = None  # type: ignore[assignment,misc]  # noqa: N806
            if SummaryWriter is not None:
                # purge_step: TensorBoard hides the earlier events at steps >= it, those the resumed run redoes.
                purge = None if last_step is None else last_step + 1
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def _truncate(self, keep_updates: int) -> int:
        """Keep the rows of updates 1..keep_updates; returns the env step of the last one kept (0 if none).
        A line cut short by a kill (the last one) is dropped with them."""
        kept, last_step = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("update", 0) <= keep_updates:
                kept.append(line)
                last_step = max(last_step, int(row.get("step", 0)))
        write_text_atomic(self.path, "".join(ln + "\n" for ln in kept))
        return last_step

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or key == "step":
                    continue
                if math.isfinite(value):
                    self.writer.add_scalar(f"trpo/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A live one-line bar on a terminal; plain lines at most every `interval` seconds otherwise."""

    def __init__(self, total_steps: int, start_step: int = 0, stream: IO[str] | None = None,
                 interval: float = 5.0) -> None:
        self.total = total_steps
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.t0 = time.perf_counter()
        self.last_print = -math.inf
        self.last_return: float | None = None

    def update(self, step: int, episode_return: float | None) -> None:
        if episode_return is not None and math.isfinite(episode_return):
            self.last_return = episode_return
        now = time.perf_counter()
        elapsed = now - self.t0
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        ret = f"{self.last_return:.1f}" if self.last_return is not None else "n/a"
        frac = min(1.0, step / self.total)
        text = f"{step}/{self.total} steps  {rate:,.0f} steps/s  ETA {_fmt_time(eta)}  return {ret}"
        if self.tty:
            bar = "#" * int(frac * 24)
            self.stream.write(f"\r[{bar:<24}] {frac:4.0%} {text}\033[K")
            self.stream.flush()
        elif now - self.last_print >= self.interval or step >= self.total:
            self.stream.write(f"{frac:4.0%} {text}\n")
            self.stream.flush()
            self.last_print = now

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60:02d}:{seconds % 60:02d}"
