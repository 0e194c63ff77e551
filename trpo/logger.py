"""Run outputs: metrics.jsonl (one JSON object per policy update), evaluations.jsonl (one per periodic evaluation),
TensorBoard events, progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any

from trpo.checkpoint import interrupts_deferred, write_text_atomic

# Fields that measure time: they differ between otherwise identical runs.
TIMING_FIELDS = ("fps", "time_rollout", "time_policy", "time_value", "time_elapsed")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "not defined for this update"
    return value


def json_lines(data: bytes) -> list[tuple[str, Any]]:
    """The lines of a JSON-lines file that are UTF-8 JSON, each with its value; the others (cut short by a kill,
    damaged, edited by hand) are left out. Lines end at LF, CR or CRLF only, as in JSON lines."""
    out = []
    for raw in data.splitlines():
        # ValueError covers bytes that are not UTF-8, text that is not JSON and integers of more digits than
        # int() takes; RecursionError, arrays nested thousands deep.
        try:
            line = raw.decode("utf-8")
            out.append((line, json.loads(line)))
        except (ValueError, RecursionError):
            continue
    return out


def _update_and_step(row: Any) -> tuple[int, int] | None:
    """(update, env step) of a metrics row: an object with an integer `update` (not a bool) and an
    integer-valued `step` (256 or 256.0); None for any other value."""
    if not isinstance(row, dict):
        return None
    update, step = row.get("update"), row.get("step")
    if isinstance(step, float) and step.is_integer():  # False for NaN and the infinities
        step = int(step)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (update, step)):
        return None
    return update, step


class MetricsLog:
    """Appends one line per update to metrics.jsonl (or another `name`; flushed each time) and mirrors scalars to
    TensorBoard.

    keep_updates: rows of a resumed run's earlier life to keep (those up to its checkpoint); the rows after it,
    and their TensorBoard events, are dropped, because the resumed run writes those updates again. `kept` holds
    the rows kept."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_updates: int = 0,
                 name: str = "metrics.jsonl") -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / name
        self.kept: list[dict[str, Any]] = []
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

        Every other line is dropped, like the line a kill cut short: rows after the checkpoint, and lines that are
        no row of this run (not UTF-8, not JSON, not an object with an integer `update` and an integer-valued
        `step`). A damaged row's update is unknown, so it may be one that the resumed run writes again."""
        kept, last_step = [], 0
        for line, row in json_lines(self.path.read_bytes()):
            update_step = _update_and_step(row)
            if update_step is not None and update_step[0] <= keep_updates:
                kept.append(line)
                self.kept.append(row)
                last_step = max(last_step, update_step[1])
        write_text_atomic(self.path, "".join(ln + "\n" for ln in kept))
        return last_step

    def write(self, row: dict[str, Any]) -> None:
        with interrupts_deferred():  # a whole row, and TensorBoard's writer thread never left waiting
            self.file.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
            self.file.flush()
            self.add_scalars(row, "trpo")

    def add_scalars(self, row: dict[str, Any], tag: str) -> None:
        """The row's finite numbers as TensorBoard scalars `tag/key` at env step row["step"]."""
        if self.writer is None:
            return
        with interrupts_deferred():
            step = int(row["step"])
            for key, value in row.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or key == "step":
                    continue
                if math.isfinite(value):
                    self.writer.add_scalar(f"{tag}/{key}", value, step)

    def close(self) -> None:
        with interrupts_deferred():
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
