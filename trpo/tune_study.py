"""The bookkeeping of a `trpo tune` study: its Optuna storage, its directory, and which process holds which trial.

Owns: opening the storage and the study (`open_study`, refused when made for other settings), OUT/STUDY's
study.json (`claim_study_dir`: one study and storage per directory), the process that runs a trial (`_owner`,
`_started`, `_gone`) and the trials left running by one that is gone (`end_interrupted`), the exact count of
trials across processes (`_claim`, `_taken`, `_SurplusError`), and importing Optuna (`_optuna`).
Must not touch: the search space and the settings' checks (trpo/tune_space.py), training a trial, the worker
processes and the summary (trpo/tune.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trpo.errors import ConfigError
from trpo.extras import install_hint
from trpo.tune_space import TuneSettings

MARKER = "study.json"  # in OUT/STUDY: the study and storage whose trials the directory holds


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"trpo tune needs Optuna: {install_hint('tune')}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's reason is in its user attrs instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's
    return optuna


def open_study(s: TuneSettings, worker: int = 0, create: bool = True) -> Any:
    """The study, created (unless not `create`) or loaded; refused if it was made for another env, budget or
    space."""
    optuna = _optuna()
    claim_study_dir(s, write=False)  # before the storage is made: another storage's study is refused untouched
    storage = _storage(s.storage)
    startup = s.startup_trials
    exists = s.study in optuna.get_all_study_names(storage)
    if not create and not exists:
        raise ConfigError(f"no study {s.study!r} in {s.storage}")
    # Seeded per process and per how far the study got, so that a resumed search does not draw its first random
    # trials again.
    done = storage.get_n_trials(storage.get_study_id_from_name(s.study)) if exists else 0  # no Study, no copies
    seed = s.seed * 7919 + worker + 104729 * done
    sampler = (optuna.samplers.RandomSampler(seed=seed) if s.sampler == "random" else
               optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=s.total_steps // 3)
              if s.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=s.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    identity = {"env": s.env, "total_steps": s.total_steps, "evaluations": s.evaluations,
                "space": {d.name: d.describe() for d in s.space}, "fixed": {k: str(v) for k, v in s.fixed.items()}}
    recorded = study.user_attrs.get("trpo")
    if recorded is None:
        study.set_user_attr("trpo", identity)
    elif recorded != identity:
        differ = sorted(k for k in identity if recorded.get(k) != identity[k])
        raise ConfigError(f"study {s.study!r} in {s.storage} was made with another {', '.join(differ)}; "
                          "give another --study name, or the same settings to go on with it")
    claim_study_dir(s)
    end_interrupted(study)
    return study


def _storage_identity(s: TuneSettings) -> str:
    """The storage as study.json records it: a SQLite file by its path from the study's directory (the two move
    together), another URL without its password."""
    if s.storage.startswith("sqlite:///"):
        db = Path(s.storage[len("sqlite:///"):].split("?")[0]).resolve()
        return "sqlite:///" + Path(os.path.relpath(db, s.study_dir.resolve())).as_posix()
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):  # a URL SQLAlchemy reads otherwise than Optuna: as it is
        return make_url(s.storage).render_as_string(hide_password=True)
    return s.storage


def claim_study_dir(s: TuneSettings, write: bool = True) -> None:
    """OUT/STUDY holds one study's trial_N directories and best.yaml: record which study and storage in its
    study.json (unless not `write`: a storage that did not open yet), and refuse another storage's study of the
    same name, whose trials would overwrite them."""
    mine = {"study": s.study, "storage": _storage_identity(s)}
    marker = s.study_dir / MARKER
    if not write and not marker.exists():
        return
    s.study_dir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():  # written whole under another name, then linked: a process racing us reads all of it
        temp = s.study_dir / f".{MARKER}.{os.getpid()}"
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as file:
            file.write(json.dumps(mine) + "\n")
        try:
            os.link(temp, marker)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    try:
        recorded = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{marker}, which names the study whose trials {s.study_dir} holds, is unreadable "
                          f"({type(exc).__name__}); give another --out") from None
    if recorded != mine:
        theirs = recorded if isinstance(recorded, dict) else {}
        raise ConfigError(f"{s.study_dir} holds the trials of study {theirs.get('study')!r} in "
                          f"{theirs.get('storage')} (a SQLite path from that directory), not of {s.study!r} in "
                          f"{s.storage}, whose trials would overwrite them: give another --out or --study, or that "
                          "storage")


def _owner() -> dict[str, Any]:
    """The user attrs that name the process running a trial: its id, its start (Linux) and the host."""
    return {"process": os.getpid(), "process_started": _started(os.getpid()), "host": socket.gethostname()}


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot; Linux), to tell it from a later one given the same id;
    None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _gone(attrs: Mapping[str, Any]) -> bool:
    """Whether the process that `attrs` (`_owner`) name is gone: on this host only, where it can be asked."""
    pid = attrs.get("process")
    if attrs.get("host") != socket.gethostname() or not isinstance(pid, int) or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)  # signal 0: only whether it exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: there
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    started = attrs.get("process_started")
    return state in ("Z", "X") or (started is not None and _started(pid) not in (None, started))


def end_interrupted(study: Any) -> list[int]:
    """Mark failed, with the reason, the running trials whose process is gone (killed: SIGKILL, a crash, a lost
    machine): those on this host by their process, the others once their heartbeat stops (Optuna's). They would
    otherwise stay running in the summary, and count against `trials`. Returns the numbers of those marked."""
    optuna = _optuna()
    storage, ended = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _gone(t.user_attrs):
            continue
        reason = (f"interrupted: its process {t.user_attrs['process']} on {t.user_attrs['host']} ended without "
                  "finishing it (killed?)")
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process was first
            storage.set_trial_user_attr(t._trial_id, "error", reason)
            storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            ended.append(t.number)
    optuna.storages.fail_stale_trials(study)
    return ended


def _storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; ConfigError, naming the URL, where it cannot be opened."""
    optuna = _optuna()
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes share the file
    for attempt in range(5):
        try:
            # A killed process's trial stops beating and is marked failed instead of staying "running" for ever.
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120, **kwargs)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            # Two processes making a new database's tables at once: one finds them made, or locked. Again.
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or (
                isinstance(exc, sqlalchemy.exc.OperationalError) and any(
                    word in str(exc) for word in ("already exists", "locked")))
            if racing:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"cannot open the Optuna storage {url}: {getattr(exc, 'orig', None) or exc}") from None
    raise ConfigError(f"cannot open the Optuna storage {url}: its tables could not be made")


class _SurplusError(Exception):
    """The study already has its trials finished or running: this one ends before it trains."""


def _claim(s: TuneSettings, trial: Any) -> None:
    """Let `trial` train only if fewer than s.trials trials before it are finished (complete, pruned) or running;
    _SurplusError otherwise. Trial numbers follow the storage's order of creation, which the storage makes one at a
    time, so every process sees the same trials before each trial and two cannot both take the last place."""
    if _taken(trial.study, trial.number) >= s.trials:
        trial.set_user_attr("surplus", True)
        trial.study.stop()  # this process's search ends with this trial
        raise _SurplusError(f"the study has its {s.trials} trials finished or running")


def _taken(study: Any, before: int | None = None) -> int:
    """The study's trials (numbered below `before`) that are finished (complete, pruned) or running."""
    states = _optuna().trial.TrialState
    return sum((before is None or t.number < before) and t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)
               and not t.user_attrs.get("surplus") for t in study.get_trials(deepcopy=False))
