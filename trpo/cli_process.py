"""The process around a `trpo` command: errors the user can fix as one line, Ctrl-C and SIGTERM, closed streams.

Owns: UsageError, which errors are the user's (`USER_ERRORS`, `_is_user_error`) and their one line (`_one_line`);
the signal handlers and the signals received (`_SIGNALS`, `_stop_if_signalled`, `_Terminated`); the run in progress
(`_RUN`) and what an interrupt leaves of it (`_saved_state`); stdout and stderr closed by the caller or by a reader
that went away (`_closed_streams_to_devnull`, `_print`, `_StdoutClosedError`).
Must not touch: argparse (trpo/cli_args.py), the commands and main() (trpo/cli.py). Only the standard library at
import: trpo/cli.py imports this where Ctrl-C in the first instants is answered without a traceback, and
trpo.checkpoint loads only once an interrupted run is reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A bad command-line value (reported like the other user errors)."""


# The run directory of the `trpo train` in progress (or, as 'note', what another command keeps), for the line
# printed when it is interrupted.
_RUN: dict[str, Any] = {}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a run the same way."""


# Signals received: Python drops the KeyboardInterrupt of one that arrives inside a finalizer ("Exception ignored
# in ..."), so the training loop also looks here after each update (`_stop_if_signalled`).
_SIGNALS: list[int] = []


def _on_signal(signum: int, frame: Any) -> None:
    _SIGNALS.append(signum)
    _stop_if_signalled()


def _stop_if_signalled(*_: Any) -> None:
    """Raise the interrupt of the last signal received, if any. Also learn()'s callback (agent, metrics): it stops
    the run after an update whose KeyboardInterrupt Python dropped."""
    if _SIGNALS:
        raise _Terminated if _SIGNALS[-1] == signal.SIGTERM else KeyboardInterrupt


def _install_signal_handlers() -> dict[int, Any]:
    """SIGTERM, and Ctrl-C unless ignored (nohup, a background job), to `_on_signal`; returns what they were."""
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is None or (sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler):
            continue
        # Not in the main thread (main() called from a thread), signal.signal raises: leave signals alone there.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, _on_signal)
    return previous


def _closed_streams_to_devnull() -> None:
    """stdout or stderr closed by the caller (`trpo train 2>&-`) becomes /dev/null: Python leaves sys.stderr None,
    where every line would raise, and the next file opened (metrics.jsonl) would take the number 2, where env
    worker processes write what they say."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 (the process's own, never closed)


# The errors the user can fix besides UsageError and OSError, as (module, class).
USER_ERRORS = (("trpo.errors", "CheckpointError"), ("trpo.errors", "RunDirError"), ("trpo.errors", "ConfigError"),
               ("trpo.errors", "EnvError"), ("trpo.errors", "ExportError"), ("trpo.errors", "PlotError"),
               ("trpo.errors", "UnsupportedSpaceError"), ("trpo.tune", "WorkerError"))


def _is_user_error(exc: BaseException) -> bool:
    """Errors the user can fix (flags, files, their env, the OS refusing a write): one line, no traceback."""
    if isinstance(exc, UsageError | OSError):
        return True
    # Only a loaded module can have raised its error: importing the others (trpo.distributions loads torch, 2-3 s)
    # would delay the one line a mistyped flag gets.
    return any(isinstance(exc, getattr(sys.modules[module], name)) for module, name in USER_ERRORS
               if module in sys.modules)


def _saved_state(run_dir: Path | None) -> str:
    """What an interrupted `trpo train` leaves, read from the disk: the newest checkpoint and its step, else
    whether the run can start again from its config.yaml."""
    if run_dir is None:
        return "nothing was written"
    from trpo import checkpoint

    resume = f"trpo train --resume {run_dir}"
    saved = checkpoint.newest(run_dir)
    if saved is not None:
        try:
            step = checkpoint.load(saved)["num_steps"]
        except (checkpoint.CheckpointError, KeyError):
            return f"{saved} is unreadable; {resume} starts over from the previous state"
        return f"the checkpoint {saved} (step {step}) is intact; continue with: {resume}"
    if (run_dir / "config.yaml").is_file():
        return f"no checkpoint was written yet; {resume} starts the run again from its first step"
    return f"nothing was written to {run_dir}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # e.g. "Not a directory: 'runs/x/config.yaml'"
        where = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return " ".join(str(exc).split())


class _StdoutClosedError(Exception):
    """The reader of our stdout went away (`trpo presets | head`)."""


def _print(text: str, end: str = "\n") -> None:
    """print() to stdout, telling a reader that went away from other broken pipes (a dead env worker's)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        # Point stdout at devnull, so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise _StdoutClosedError from None
