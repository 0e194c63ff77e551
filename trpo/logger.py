"""Run outputs: metrics.jsonl (one JSON object per policy update), evaluations.jsonl (one per periodic evaluation),
TensorBoard events, progress display. It writes only the log file rundir.py names, in the directory it is handed
(with its tensorboard/ folder), and progress lines to a stream (stderr unless told); it never decides the run
directory's layout nor writes a checkpoint or config.yaml (rundir.py and checkpoint.py do)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from trpo.checkpoint import interrupts_deferred, open_text, regular_file, write_text_atomic

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
    if (isinstance(update, int) and not isinstance(update, bool)
            and isinstance(step, int) and not isinstance(step, bool)):
        return update, step
    return None


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
        # A link or other non-file there is refused before it is read or written (checkpoint.regular_file).
        last_step = self._truncate(keep_updates) if regular_file(self.path) else None
        self.file = open_text(self.path)
        self.writer = None
        self.events = run_dir / "tensorboard"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                SummaryWriter = None  # type: ignore[assignment,misc]  # noqa: N806
            if SummaryWriter is not None:
                # purge_step: TensorBoard hides the earlier events at steps >= it, those the resumed run redoes.
                purge = None if last_step is None else last_step + 1
                _quiet_writer_threads()
                with _naming(self.events):  # its first event is written at once
                    self.writer = SummaryWriter(log_dir=str(self.events), purge_step=purge)

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
            with _naming(self.path):
                self.file.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
                self.file.flush()
            self.add_scalars(row, "trpo")

    def add_scalars(self, row: dict[str, Any], tag: str) -> None:
        """The row's finite numbers as TensorBoard scalars `tag/key` at env step row["step"]."""
        if self.writer is None:
            return
        with interrupts_deferred(), _naming(self.events):  # its thread's error (a full disk) is raised here
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
                writer, self.writer = self.writer, None
                with _naming(self.events):
                    writer.close()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError without a file name (a full disk, as a write or TensorBoard's thread raises it) names `path`, for
    the CLI's one line."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread keeps what it raises (a full disk) for the writer's next call to raise in the
    main thread, and raises it in its own thread too, where Python prints its traceback before the CLI's one
    line: not that one. Every other thread's exception goes to the hook there was."""
    try:
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    except ImportError:  # another layout: its tracebacks are printed
        return
    previous = threading.excepthook
    if getattr(previous, "trpo_quiet", False):
        return

    def hook(args: Any) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and args.thread.exception is args.exc_value):
            previous(args)

    hook.trpo_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


# Seconds between the plain progress lines written where the output is no terminal (a log file, a pipe).
PLAIN_INTERVAL = 5.0


class _Display:
    """Where a display writes (stderr unless told). A stream that is gone (closed: `2>&-`, or a pipe whose reader
    left) ends the display, never the run it shows."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # None: Python found no stderr at start
        try:
            self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        except (OSError, ValueError):  # ValueError: a closed file
            self.tty = False

    def emit(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None


class Progress(_Display):
    """A live one-line bar on a terminal; plain lines at most every `interval` seconds (PLAIN_INTERVAL) otherwise."""

    def __init__(self, total_steps: int, start_step: int = 0, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        super().__init__(stream)
        self.total = total_steps
        self.start_step = start_step
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.t0 = time.perf_counter()
        self.last_print = -math.inf
        self.last_return: float | None = None
        self.bar = ""  # the terminal's bar as last drawn, drawn again under a note

    def update(self, step: int, episode_return: float | None) -> None:
        if episode_return is not None and math.isfinite(episode_return):
            self.last_return = episode_return
        now = time.perf_counter()
        elapsed = now - self.t0
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.inf
        ret = f"{self.last_return:.1f}" if self.last_return is not None else "n/a"
        frac = min(1.0, step / self.total)
        text = f"{step}/{self.total} steps  {rate:,.0f} steps/s  ETA {fmt_time(eta)}  return {ret}"
        if self.tty:
            self.bar = f"[{'#' * int(frac * 24):<24}] {frac:4.0%} {text}"
            self.emit(f"\r{self.bar}\033[K")
        elif now - self.last_print >= self.interval or step >= self.total:
            self.emit(f"{frac:4.0%} {text}\n")
            self.last_print = now

    def note(self, text: str) -> None:
        """A line of its own among the progress (a periodic evaluation's result). On a terminal the bar's line is
        cleared first, then the bar is drawn again below the note: carriage returns would otherwise write the next
        bar over the note's end."""
        self.emit(f"\r{text}\033[K\n{self.bar}" if self.tty else text + "\n")

    def close(self) -> None:
        if self.tty:
            self.emit("\n")


class EpisodeProgress(_Display):
    """Episodes being run one after another (`trpo eval`, above all with --video: a few frames a second): a live
    line on a terminal, plain lines at most every `interval` seconds (PLAIN_INTERVAL) otherwise. Counts `unit`s:
    frames written to a video, else env steps. A quick evaluation stays quiet: the terminal's line appears after
    `delay` seconds, the first plain line after `interval`; the terminal's line is cleared at the end, where the
    result is printed."""

    def __init__(self, episodes: int, unit: str = "steps", stream: IO[str] | None = None,
                 interval: float | None = None, delay: float = 1.0) -> None:
        super().__init__(stream)
        self.episodes = episodes
        self.unit = unit
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.delay = delay
        self.t0 = time.perf_counter()
        self.last_print = self.t0 if not self.tty else -math.inf
        self.drawn = False

    def text(self, done: int, count: int, now: float) -> str:
        elapsed = now - self.t0
        rate = count / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.episodes - done) if done else math.inf
        return (f"{done}/{self.episodes} episodes  {count} {self.unit}  {rate:,.1f} {self.unit}/s  "
                f"elapsed {fmt_time(elapsed)}  ETA {fmt_time(eta)}")

    def update(self, done: int, count: int) -> None:
        """`done` episodes finished, `count` frames or steps so far; called at every step, cheap between lines."""
        now = time.perf_counter()
        if self.tty:
            # A few redraws a second are enough to read.
            if now - self.t0 >= self.delay and now - self.last_print >= 0.2:
                frac = done / self.episodes
                self.emit(f"\r[{'#' * int(frac * 24):<24}] {self.text(done, count, now)}\033[K")
                self.last_print, self.drawn = now, True
        elif now - self.last_print >= self.interval:
            self.emit(self.text(done, count, now) + "\n")
            self.last_print = now

    def close(self) -> None:
        if self.drawn:
            self.emit("\r\033[K")


def fmt_time(seconds: float) -> str:
    """A duration as MM:SS, or H:MM:SS from an hour; --:-- where it is unknown (infinite)."""
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60:02d}:{seconds % 60:02d}"
