"""Run directories and checkpoints: atomic writes (a killed run never leaves a half-written file), loads with
clear errors, and the rules that keep two runs from mixing in one directory: one writer at a time (`RunDirLock`),
and a run directory written only by its own run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from trpo.errors import CheckpointError as CheckpointError  # defined there; importable here too
from trpo.errors import RunDirError as RunDirError

FORMAT = "trpo-checkpoint-v1"
LATEST = Path("checkpoints") / "latest.pt"
FINAL = Path("final.pt")
EVALUATIONS = "evaluations.jsonl"  # the periodic evaluations' rows (eval_every)
# Everything a run writes into its directory (and all that --overwrite removes: other files are left alone).
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "final.pt", "eval.json", EVALUATIONS,
             "best.pt")
BEST = Path("best.pt")
# Where a resume moves the numbered checkpoints saved after the checkpoint it goes on from (`set_aside_after`).
REPLACED = Path("checkpoints") / "replaced"
LOCK = ".lock"
# The folders a run writes into: real folders of the run directory, never links to elsewhere.
RUN_FOLDERS = ("checkpoints", "tensorboard")
# `_replace_atomically`'s temporary files: ".NAME.PID.tmp".
_TEMP_NAME = re.compile(r"\..+\.\d+\.tmp")
# The key of a checkpoint's SHA-256 checksum of the rest (`_digest`); absent from checkpoints before it.
CHECKSUM = "sha256"
# Parts of a checkpoint whose numbers may legitimately be non-finite or are checked elsewhere (TRPOConfig).
_NOT_NUMBERS = ("config", "versions")


def regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (False: nothing there). Anything else there, a symbolic link above all, is
    RunDirError: trpo writes only regular files, and never through a link, which could point anywhere."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return True
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
    raise RunDirError(f"{path} is {kind}; trpo writes only regular files, never through links: remove it")


def open_regular(path: Path, flags: int) -> int:
    """os.open of a regular file of its own to write: never following a link at `path` (O_NOFOLLOW, after
    `regular_file`, so that a link made in between fails too), nor writing into a file with other hard links."""
    regular_file(path)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if not os.path.islink(path):
            raise
        raise RunDirError(f"{path} is a symbolic link; trpo never writes through links: remove it") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file of its own (it has {info.st_nlink} hard links); trpo "
                          "never writes into a file shared with another path: remove it")
    return fd


def open_text(path: Path, append: bool = True) -> IO[str]:
    """A regular file of its own opened to write text, appended to or from empty (logs, metrics rows), never
    through a link (`open_regular`)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(open_regular(path, flags), "a" if append else "w", encoding="utf-8")


_HELD_LOCKS: set[int] = set()  # fds of the run dir locks this process holds; a forked child closes its copies


class RunDirLock:
    """Makes this process the one writer of a run directory: an exclusive OS lock on RUN_DIR/.lock, taken before
    anything in the directory is touched and held until `release()`. The kernel drops it when the process ends, so
    a killed run never leaves a stale lock. The file holds the holder's PID, for the message a second writer gets;
    it is never deleted (two processes could otherwise lock two different files of one name)."""

    def __init__(self, run_dir: Path) -> None:
        self.fd: int | None = None
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"run directory {run_dir} exists and is not a directory")
        self.path = run_dir / LOCK
        self.made_dir = not run_dir.exists()
        self.made_file = not os.path.lexists(self.path)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Every write of a run happens under this lock: its folders are checked here, once, and each file as it is
        # opened (`open_regular`, `_replace_atomically`).
        for folder in RUN_FOLDERS:
            if os.path.lexists(run_dir / folder) and (os.path.islink(run_dir / folder) or
                                                      not (run_dir / folder).is_dir()):
                raise RunDirError(f"{run_dir / folder} is a link or not a folder; trpo writes only into folders of "
                                  "the run directory itself: remove it")
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        try:
            _lock_fd(fd)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            who = "this process (close() the agent writing it first)" if holder == str(os.getpid()) \
                else f"process {holder}"
            raise RunDirError(f"{run_dir} is in use: the run there is being written by {who}; wait for it to end, "
                              "or use another run directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        if self.fd is not None:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def abandon(self) -> None:
        """Release, removing the lock file (and the directory) if this lock made them: for a start that failed
        before writing anything. Removed while still held, so no other process can be holding that file."""
        if self.fd is not None:
            if self.made_file:
                self.path.unlink(missing_ok=True)
            if self.made_dir:
                with contextlib.suppress(OSError):  # not empty: another process made its own lock file there
                    self.path.parent.rmdir()
        self.release()

    def __del__(self) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    """Lock a file without waiting; OSError if another holds it."""
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        # flock, not fcntl/lockf record locks: those are per process, so two agents in one process would both
        # get them. A forked child shares the lock's open file description: it closes its copies at once.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    # An env worker forked while the lock is held would otherwise keep the run dir locked after its parent let go.
    os.register_at_fork(after_in_child=_close_inherited_locks)


def remove_temp_files(run_dir: Path) -> None:
    """Remove the temporary files of writes that a killed run left (call with the run dir's lock held: no write
    of another process is then in flight)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.iterdir():
                if _TEMP_NAME.fullmatch(path.name) and path.is_file():
                    path.unlink(missing_ok=True)


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """A run's config.yaml as a mapping; RunDirError if it is missing, not UTF-8, not YAML or not a mapping."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        record = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise RunDirError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(record, dict):
        raise RunDirError(f"{path} must hold a mapping of field: value")
    return record


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds (part of) a run: any of the files a run writes."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A run that starts from update 0 may use `run_dir` if it holds no run, or with `overwrite`."""
    if holds_run(run_dir) and not overwrite:
        raise RunDirError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or start over "
                          "with --overwrite (API: TRPO.resume(run_dir), or overwrite=True)")


def clear_run(run_dir: Path) -> None:
    """Remove a run's files (RUN_FILES; other files are left alone)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


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


_INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of a step that must not be cut, then act as they would have: a
    checkpoint write (a KeyboardInterrupt inside torch.save's zip writer turns into its RuntimeError), a TensorBoard
    write (one inside its queue leaves the writer's thread waiting forever at close) and forking worker processes
    (one inside fork's callbacks is swallowed as an "ignored exception", and the run goes on). Only the main thread
    receives signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _INTERRUPTS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)  # e.g. raises KeyboardInterrupt
            elif handler != signal.SIG_IGN:  # the default action (or a handler set outside Python): send it again
                os.kill(os.getpid(), received[0])


def _replace_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path` (atomic on POSIX): a
    killed run leaves the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    regular_file(path)  # the rename would replace a link rather than follow it; still, a link there is refused
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with interrupts_deferred():
        try:
            tmp.unlink(missing_ok=True)  # a killed write's, or a link planted at this predictable name: removed
            with os.fdopen(open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as fh:
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
    import torch  # here, not at the top: the CLI checks run dirs and paths before torch loads (2-3 s)

    _replace_atomically(path, lambda fh: torch.save(_sealed(state), fh))


def serialize(state: dict[str, Any]) -> bytes:
    """A checkpoint as bytes, to write later (`write_bytes_atomic`): a snapshot that later updates do not change."""
    import torch

    buffer = io.BytesIO()
    torch.save(_sealed(state), buffer)
    return buffer.getvalue()


def _sealed(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's contents with their format and their checksum beside them; CheckpointError, and nothing
    written, where they hold what no load accepts (`damage`): the last checkpoint written stays the good one."""
    damage = _damage(state)
    if damage is not None:
        raise CheckpointError(f"not saved: {damage}, which no load would accept (the last checkpoint written stays)")
    contents = {"format": FORMAT, **state}
    return {**contents, CHECKSUM: _digest(contents)}


def _leaves(value: Any, name: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every tensor, number, text and None in a checkpoint's nested dicts and lists, in an
    order that does not depend on how they were stored."""
    if isinstance(value, dict):
        for key in sorted(value, key=repr):
            yield from _leaves(value[key], f"{name}.{key}" if name else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{name}[{i}]")
    else:
        yield name, value


def _digest(contents: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents: each leaf's name, then a tensor's dtype, shape and bytes or another
    value's repr. It names accidental damage (a flipped bit loads as another weight); anyone who can write the
    file can also write a matching checksum, so it proves nothing about who wrote it."""
    import torch

    digest = hashlib.sha256()
    for name, value in _leaves(contents):
        digest.update(f"{name}\0".encode())
        if isinstance(value, torch.Tensor):
            # A copy in standard layout: a damaged file can give a size-1 tensor stride 0, which contiguous()
            # keeps and a view as bytes refuses.
            flat = value.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}\0".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{value!r}\0".encode())
    return digest.hexdigest()


def check_intact(path: Path, state: dict[str, Any]) -> None:
    """CheckpointError naming what is damaged: contents that do not match their checksum (a checkpoint from before
    checksums has none, and is read as it is), a non-finite number among the weights, optimizer and normalizer
    statistics, or a negative variance."""

    saved = state.get(CHECKSUM)
    if saved is not None and saved != _digest({k: v for k, v in state.items() if k != CHECKSUM}):
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the SHA-256 checksum saved "
                              "with them")
    damage = _damage(state)
    if damage is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: {damage}")


def _damage(state: dict[str, Any]) -> str | None:
    """'NAME holds ...' for the first non-finite number among the weights, optimizer and normalizer statistics, or
    negative variance; None where there is none."""
    import torch

    for key in sorted(state.keys() - {*_NOT_NUMBERS, CHECKSUM, "format"}):
        for name, value in _leaves(state[key], key):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                finite = bool(torch.isfinite(value).all())
                negative = name.endswith("norm.var") and bool((value < 0).any())  # obs_norm's, reward_norm's
            else:
                finite, negative = not (isinstance(value, float) and not math.isfinite(value)), False
            if not finite or negative:
                return f"{name} holds {'NaN or an infinity' if not finite else 'a negative variance'}"
    return None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _replace_atomically(path, lambda fh: fh.write(data))


def numbered(run_dir: Path) -> list[Path]:
    """The numbered checkpoints checkpoints/step_N.pt of a run (save_every), oldest first."""
    found = [p for p in (run_dir / "checkpoints").glob("step_*.pt") if p.stem[5:].isdigit()]
    return sorted(found, key=step_of)


def step_of(numbered_checkpoint: Path) -> int:
    """N of checkpoints/step_N.pt: the env step it was saved at."""
    return int(numbered_checkpoint.stem[5:])


def set_aside_after(run_dir: Path, step: int) -> None:
    """Move the numbered checkpoints saved after env step `step` to checkpoints/replaced/: a resume from `step`
    trains that part of the run again (its rows are dropped with them), so that keep_checkpoints counts the new
    life's alone, and no saved model is deleted."""
    for path in numbered(run_dir):
        if step_of(path) > step:
            (run_dir / REPLACED).mkdir(parents=True, exist_ok=True)
            path.replace(run_dir / REPLACED / path.name)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain data only: torch.load with weights_only=True)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trpo checkpoint")
    check_intact(path, state)
    return state


def newest(run_dir: Path) -> Path | None:
    """A run directory's newest saved state: checkpoints/latest.pt (written every checkpoint_every updates and at
    the end of every learn()), else final.pt (a run whose latest.pt was removed), else None."""
    for candidate in (run_dir / LATEST, run_dir / FINAL):
        if candidate.is_file():
            return candidate
    return None


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file as given, or for a run directory its newest state (`newest`)."""
    path = Path(path)
    if path.is_dir():
        found = newest(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in run directory {path} (looked for {LATEST} and {FINAL})")
        return found
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
