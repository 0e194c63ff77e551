"""A run directory as one writer sees it: claiming and locking it, starting or continuing its run (config.yaml,
the metrics and evaluation logs), and its checkpoints (latest, best, numbered, final) with the rules that keep
them consistent after a kill at any point.

It takes what it writes as plain data (a state dict, a record, serialized bytes) and never imports the agent; the
file formats and the low-level link-safe writes are checkpoint.py's. No other module writes into a run directory
(logger.py opens the logs it is handed here).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from trpo import checkpoint
from trpo.checkpoint import RunDirError
from trpo.logger import MetricsLog

# latest.pt's copy of a best.pt not yet written (`RunDir.save_latest`), as bytes in a uint8 tensor.
BEST_PENDING = "best_pending"


class RunDir:
    """The run directory `path` of one agent (None: it has none yet; it may be set until the directory is
    claimed). `loaded_from`: the checkpoint the agent was loaded from, if it was (it continues that run, or starts
    a new one from it in a directory without a run)."""

    def __init__(self, path: str | Path | None, overwrite: bool = False) -> None:
        self._path = None if path is None else Path(path)
        self.overwrite = overwrite
        self.loaded_from: Path | None = None
        self.lock: checkpoint.RunDirLock | None = None  # held from the first write until release()
        self.best_snapshot: bytes | None = None  # the best agent so far, for best.pt at the next checkpoint
        self.best_pending_run: str | None = None  # the run whose checkpoint carried best_snapshot, when loaded

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RunDirError("this agent has no run directory")
        return self._path

    @property
    def given(self) -> Path | None:
        return self._path

    @given.setter
    def given(self, path: str | Path | None) -> None:
        if self.lock is not None:
            raise RunDirError(f"the run directory cannot change while this agent writes {self._path}")
        self._path = None if path is None else Path(path)

    # --- claiming ------------------------------------------------------------------------------------------

    def claim(self, run_id: str | None, num_updates: int) -> bool:
        """Become the one writer (`checkpoint.RunDirLock`, held until release()), clear the temporary files of
        killed writes, and check that this agent may write here: a new run needs a directory without a run (or
        overwrite); a loaded agent continues its own run, or starts a new one from its checkpoint in a directory
        without a run, and never writes into another run. Returns whether this call took the lock."""
        if self.lock is not None:
            return False
        lock = checkpoint.RunDirLock(self.path)
        try:
            checkpoint.remove_temp_files(self.path)
            if self.loaded_from is None:
                checkpoint.check_new_run_dir(self.path, self.overwrite)
            elif not self.owns(run_id):
                if checkpoint.holds_run(self.path):
                    raise RunDirError(
                        f"{self.path} holds another run than the one {self.loaded_from} was saved from; load into "
                        "an empty run directory to go on from this checkpoint there, or continue that run with "
                        f"TRPO.resume({str(self.path)!r})")
            else:
                self._refuse_rewind(num_updates)
        except BaseException:
            lock.release()
            raise
        self.lock = lock
        return True

    def _refuse_rewind(self, num_updates: int) -> None:
        """A checkpoint older than its run's newest (best.pt, a numbered one) would go on here by dropping the rows
        and checkpoints after it: refused, saying how to branch from it instead."""
        assert self.loaded_from is not None
        newest = checkpoint.newest(self.path)
        if newest is None or newest.resolve() == self.loaded_from.resolve():
            return
        ahead = int(checkpoint.load(newest)["num_updates"])
        if ahead > num_updates:
            raise RunDirError(
                f"{self.loaded_from} is at update {num_updates} of the run in {self.path}, which went on to update "
                f"{ahead} ({newest}): training it there would drop the updates after it. To branch from it, load it "
                f"with another run_dir (an empty one); to go on with the run, TRPO.resume({str(self.path)!r})")

    def owns(self, run_id: str | None) -> bool:
        """Whether this directory holds the run the loaded checkpoint was saved from: the run ids match, or, for
        runs saved before run ids, the checkpoint lies in it."""
        assert self.loaded_from is not None
        if run_id is not None and (self.path / "config.yaml").is_file():
            with contextlib.suppress(RunDirError):
                return checkpoint.read_run_record(self.path).get("run_id") == run_id
        return self.loaded_from.resolve().parent in (self.path.resolve(), self.path.resolve() / "checkpoints")

    def release(self, abandon: bool = False) -> None:
        """Let go of the directory; `abandon`: also remove the lock file and directory this claim made (a start
        that failed before writing anything)."""
        if self.lock is not None:
            self.lock.abandon() if abandon else self.lock.release()
            self.lock = None

    # --- a run starts or goes on ---------------------------------------------------------------------------

    def run_id_for(self, run_id: str | None) -> str:
        """The id of the run this agent writes from now on: a loaded agent's own run goes on (one from before run
        ids gets one now), elsewhere (claim refused any other run) it starts a new one; a new agent starts a new
        run, the old run's files removed first (overwrite)."""
        if self.loaded_from is not None:
            if run_id is None or not self.owns(run_id):
                run_id = uuid.uuid4().hex
            self.loaded_from = None  # from here on, the run in this directory is this agent's
        elif run_id is None:
            checkpoint.clear_run(self.path)
            run_id = uuid.uuid4().hex
        if self.best_pending_run not in (None, run_id):
            self.best_snapshot = None  # a new run from another run's checkpoint: that run's best is not this one's
        self.best_pending_run = None
        return run_id

    def open(self, record: dict[str, Any], num_steps: int, num_updates: int) -> MetricsLog:
        """Write config.yaml (`record`), the best model a checkpoint carried, set aside the numbered checkpoints
        saved after `num_steps` (by a life of the run killed after its last checkpoint), and open metrics.jsonl
        without the rows after `num_updates`."""
        checkpoint.write_text_atomic(self.path / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        self.write_best()
        checkpoint.set_aside_after(self.path, num_steps)
        return MetricsLog(self.path, keep_updates=num_updates)

    def open_evaluations(self, eval_every: int, num_updates: int) -> tuple[MetricsLog | None, list[dict[str, Any]]]:
        """evaluations.jsonl without the rows after `num_updates`, also where the run no longer evaluates (resumed
        with eval_every 0): every row kept is of this life of the run, as best.pt is. Returns the log to write to
        where the run evaluates, and the rows kept."""
        if not (eval_every or (self.path / checkpoint.EVALUATIONS).exists()):
            return None, []
        log = MetricsLog(self.path, tensorboard=False, keep_updates=num_updates, name=checkpoint.EVALUATIONS)
        if not eval_every:
            log.close()
            return None, log.kept
        return log, log.kept

    # --- checkpoints ---------------------------------------------------------------------------------------

    def save_latest(self, state: dict[str, Any]) -> None:
        """checkpoints/latest.pt, and best.pt if a better evaluation came since the last checkpoint: best.pt is
        never newer than latest.pt, so a resumed run's best is one of the evaluations it keeps. Until best.pt is
        written, latest.pt carries it (BEST_PENDING): a process that ends between the two writes, or a disk that
        fills there, leaves the best evaluation kept with its model, which the resume writes (`open`)."""
        if self.best_snapshot is not None:
            state = {**state, BEST_PENDING: torch.frombuffer(bytearray(self.best_snapshot), dtype=torch.uint8)}
        checkpoint.save_atomic(state, self.path / checkpoint.LATEST)
        self.write_best()

    def write_best(self) -> None:
        if self.best_snapshot is not None:
            checkpoint.write_bytes_atomic(self.path / checkpoint.BEST, self.best_snapshot)
            self.best_snapshot = None

    def carried_best(self, state: dict[str, Any], run_id: str | None) -> None:
        """Take the best.pt a loaded checkpoint carried (BEST_PENDING), to be written when its run goes on."""
        pending = state.get(BEST_PENDING)
        if isinstance(pending, torch.Tensor):
            self.best_snapshot, self.best_pending_run = pending.numpy().tobytes(), run_id

    def save_numbered(self, state: dict[str, Any], num_steps: int, keep: int) -> None:
        """checkpoints/step_N.pt, keeping the newest `keep` of them (all with 0)."""
        checkpoint.save_atomic(state, self.path / "checkpoints" / f"step_{num_steps}.pt")
        if keep:
            for old in checkpoint.numbered(self.path)[:-keep]:
                old.unlink(missing_ok=True)

    def finished(self, num_steps: int, eval_episodes: int) -> bool:
        """Whether the directory holds everything a run writes at its end: final.pt and (with eval_episodes) an
        eval.json of the final step `num_steps`."""
        if not (self.path / checkpoint.FINAL).is_file():
            return False
        if eval_episodes == 0:
            return True
        try:
            return json.loads((self.path / "eval.json").read_text(encoding="utf-8"))["step"] == num_steps
        except (OSError, ValueError, TypeError, KeyError):
            return False
