"""`trpo tune`: hyperparameter search with Optuna (pip install 'trpo[tune]').

    trpo tune --env Pendulum-v1 --trials 50 --jobs 2                  # runs/tune/Pendulum-v1.db, resumable
    trpo tune --env Pendulum-v1 --trials 50 --storage postgresql://host/db --study pend   # several machines
    trpo train --config runs/tune/Pendulum-v1/best.yaml               # the best trial's settings

Each trial trains one agent for the budget (default the env's preset budget) on top of the env's preset, with
`evaluations` periodic deterministic evaluations (the agent's eval_every): each is reported to Optuna, and the
median pruner stops a trial whose evaluation falls below the median of earlier trials at the same step. A trial's
value is its final deterministic evaluation (eval_episodes episodes). The sampler is TPE (random for its first
`startup_trials`). A study lives in an Optuna storage, a SQLite file by default, so a killed search goes on where
it stopped and several processes or machines can share one: `trials` is the study's total of finished (complete
or pruned) trials, counted exactly across processes: a trial starts only where fewer than `trials` trials before it
(in the storage's order) are finished or running (`_claim`); a surplus one ends as failed, marked `surplus`,
before it trains, and is left out of the summary. Each trial records its process and host; a trial left running
by a process that is gone (killed) is marked failed, with the reason, when a later command opens the study.
Each trial is a run directory OUT/STUDY/trial_N (metrics, evaluations, final.pt); OUT/STUDY/study.json records
the study and storage they belong to, and another storage's study of the same name is refused there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from trpo.config import PRESET_STEPS, ConfigError, TRPOConfig, coerce_fields, load_yaml, resolve_config
from trpo.extras import install_hint

# The default search space: TRPO's trust region and its CG, the advantage estimator, the batch's shape, the critic's
# fit, the networks' width and the normalizations. A list is a choice among values; a mapping {low, high, log} a
# range (integer for an integer field). `--space FILE.yaml` replaces it (same format).
DEFAULT_SPACE: dict[str, Any] = {
    "max_kl": {"low": 0.001, "high": 0.1, "log": True},
    "cg_damping": {"low": 0.001, "high": 0.5, "log": True},
    "gamma": [0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "gae_lambda": [0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0],
    "num_envs": [1, 2, 4, 8],
    "steps_per_env": [128, 256, 512, 1024, 2048],
    "value_lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "value_epochs": [5, 10, 20, 30],
    "actor_hidden": ["64,64", "128,128", "256,256"],
    "critic_hidden": ["64,64", "128,128", "256,256"],
    "normalize_obs": [True, False],
    "normalize_reward": [True, False],
}
# Not tuned (they say how trials run, not what they learn), and not in best.yaml.
RUN_FIELDS = ("vector_mode", "num_workers", "device", "torch_threads", "eval_every", "checkpoint_every")
MARKER = "study.json"  # in OUT/STUDY: the study and storage whose trials the directory holds


@dataclass(frozen=True)
class Dimension:
    """One field of the space: a choice among `choices`, or a range [low, high] (log-scaled if `log`)."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return " | ".join(map(str, self.choices))
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (" int" if self.integer else "")


def parse_space(space: Any, where: str = "space") -> list[Dimension]:
    """The search space from its YAML form, every value checked against its config field; ConfigError if not."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where} must be a non-empty mapping of config field: choices or {{low, high, log}}")
    fields = TRPOConfig.__dataclass_fields__
    dims = []
    for name, spec in space.items():
        if not isinstance(name, str) or name not in fields:
            raise ConfigError(f"{where}: unknown config field {name!r}")
        if name in RUN_FIELDS:
            raise ConfigError(f"{where}: {name} says how trials run, not what they learn; set it with --set")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: {name} has no choices")
            for value in spec:
                if not isinstance(value, str | int | float | bool):  # what Optuna stores; tuples as "64,64"
                    raise ConfigError(f"{where}: {name}: choices are numbers, booleans or text, got {value!r}")
                coerce_fields({name: value})
            if len(set(map(repr, spec))) != len(spec):
                raise ConfigError(f"{where}: {name} repeats a choice")
            dims.append(Dimension(name, choices=tuple(spec)))
        elif isinstance(spec, Mapping):
            dims.append(_range(name, dict(spec), where))
        else:
            raise ConfigError(f"{where}: {name} must be a list of choices or {{low, high, log}}, got {spec!r}")
    return dims


def _range(name: str, spec: dict[str, Any], where: str) -> Dimension:
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {name} takes low, high and optionally log, got {sorted(spec)}")
    kind = _number_kind(name)
    if kind is None:
        raise ConfigError(f"{where}: {name} is not a number: give a list of choices")
    integer = kind is int
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for label, value in (("low", low), ("high", high)):
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            raise ConfigError(f"{where}: {name}.{label} must be a finite {'integer' if integer else 'number'}, "
                              f"got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {name}.log must be true or false, got {log!r}")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{where}: {name} needs low < high{' and low > 0 (log)' if log else ''}, got {low}, {high}")
    return Dimension(name, low=float(low), high=float(high), log=log, integer=integer)


@dataclass
class TuneSettings:
    """What one search is: the env, the budget per trial, the space and the fixed fields, where it is stored."""

    env: str
    total_steps: int
    trials: int
    space: list[Dimension]
    fixed: dict[str, Any]
    study: str
    storage: str
    out: Path
    seed: int = 0
    evaluations: int = 10
    startup_trials: int = 5
    pruner: str = "median"
    sampler: str = "tpe"
    preset: str = "none"  # the env's preset, as `trpo train` would choose it ('none': the field defaults)

    @property
    def study_dir(self) -> Path:
        return self.out / self.study


def settings_for(env: str, trials: int, *, total_steps: int | None = None, space_file: str | None = None,
                 sets: Mapping[str, str] | None = None, study: str | None = None, storage: str | None = None,
                 out: Path = Path("runs/tune"), seed: int = 0, evaluations: int = 10, startup_trials: int = 5,
                 pruner: str = "median", sampler: str = "tpe") -> TuneSettings:
    """Checked settings (ConfigError for anything wrong, before a trial runs)."""
    space = parse_space(load_yaml(space_file) if space_file else DEFAULT_SPACE, space_file or "space")
    fixed = coerce_fields(dict(sets or {}))
    overlap = sorted(set(fixed) & {d.name for d in space})
    if overlap:
        raise ConfigError(f"--set fixes {', '.join(overlap)}, which the space tunes: drop one")
    from trpo.envs import resolve_env_config  # gymnasium: only where a study is set up

    config, preset = resolve_env_config(env, env, "auto", overrides=fixed)  # the fixed fields are valid on the preset
    for dim in space:  # and so is each value of the space, alone (a combination may still fail its trial)
        for value in dim.choices or (dim.low, dim.high):
            try:
                resolve_config(env, preset or "none",
                               overrides={**fixed, dim.name: int(value) if dim.integer else value})
            except ConfigError as exc:
                raise ConfigError(f"{space_file or 'space'}: {dim.name}: {value!r} is refused: {exc}") from None
    steps = total_steps or PRESET_STEPS.get(preset or "", 1_000_000)
    for name, value in (("trials", trials), ("evaluations", evaluations), ("startup_trials", startup_trials)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if steps < evaluations:
        raise ConfigError(f"total_steps ({steps}) must be at least the number of evaluations ({evaluations})")
    if pruner not in ("median", "none") or sampler not in ("tpe", "random"):
        raise ConfigError(f"pruner is median or none, sampler tpe or random; got {pruner!r}, {sampler!r}")
    if not config.eval_episodes:
        raise ConfigError("a trial's value is its final evaluation: eval_episodes must be > 0")
    name = study or env.replace(":", "_").replace("/", "_")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"study must be a plain name, got {name!r}")
    url = storage or f"sqlite:///{(out / f'{name}.db').as_posix()}"
    if url.split("?")[0] in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        # SQLAlchemy's in-memory database: gone at exit, and not even shared with the trial's own threads
        raise ConfigError(f"--storage {url} names no database file: give sqlite:///PATH.db (or a server's URL)")
    return TuneSettings(env, steps, trials, space, fixed, name, url, out, seed, evaluations, startup_trials, pruner,
                        sampler, preset or "none")


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


def objective(s: TuneSettings, trial: Any, worker: int = 0) -> float:
    """Train one trial's agent, reporting each periodic evaluation for pruning; its final evaluation's mean."""
    optuna = _optuna()
    from trpo.agent import TRPO

    trial.set_user_attr("worker", worker)
    for key, value in _owner().items():
        trial.set_user_attr(key, value)
    _claim(s, trial)
    params = {d.name: d.suggest(trial) for d in s.space}
    run_fields = {"vector_mode": "sync", "eval_every": max(1, s.total_steps // s.evaluations)}
    try:
        config, _ = resolve_config(s.env, s.preset, overrides={**run_fields, **s.fixed, **params})
        if config.num_envs * config.steps_per_env > s.total_steps:  # one batch would overrun the trial's budget
            raise ConfigError(f"a batch of {config.num_envs} x {config.steps_per_env} steps exceeds the trial's "
                              f"{s.total_steps} steps")
    except ConfigError as exc:  # a combination the config refuses: this trial fails, the search goes on
        trial.set_user_attr("error", f"ConfigError: {exc}")
        raise
    run_dir = s.study_dir / f"trial_{trial.number}"
    trial.set_user_attr("run_dir", str(run_dir))
    agent = TRPO(s.env, config=config, seed=s.seed, run_dir=run_dir, overwrite=True)
    reported = 0

    def report(agent: Any, _metrics: Any) -> None:
        nonlocal reported
        for row in agent.evaluations[reported:]:
            trial.report(row["mean_return"], row["step"])
            reported += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"evaluation {row['mean_return']:.2f} at step {row['step']}")

    try:
        agent.train_until(s.total_steps, callback=report)
        result = agent.evaluate(config.eval_episodes)
    except BaseException as exc:  # Optuna marks the trial failed (pruned): say why in the summary
        if isinstance(exc, KeyboardInterrupt):
            trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
        elif not isinstance(exc, optuna.TrialPruned):
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        agent.close()
    trial.set_user_attr("final_step", agent.num_steps)
    return float(result["mean_return"])


def work(s: TuneSettings, worker: int = 0, workers: int = 1, on_trial: Callable[[], None] | None = None) -> None:
    """This process's share of the trials the study still lacks, and again as many for those of its trials that
    failed (a combination the config refuses, a batch over the budget), up to three tries per trial asked for;
    it stops at its first surplus trial (`_claim`: other processes took the study's last places). `on_trial()`
    runs after each of its trials."""
    optuna = _optuna()
    study = open_study(s, worker)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    missing = max(0, s.trials - len(study.get_trials(deepcopy=False, states=done)))
    share = missing // workers + (worker < missing % workers)

    def after_trial(study: Any, _trial: Any) -> None:
        if on_trial is not None:
            on_trial()
        if _taken(study) >= s.trials:  # the others took the last places: no surplus trial to ask for
            study.stop()

    tries = 3 * share
    me = _owner()
    while share and tries > 0:
        before = len(study.trials)
        # ConfigError: the trial fails, the search goes on; _SurplusError: it fails and the search stops.
        study.optimize(lambda trial: objective(s, trial, worker), n_trials=share, catch=(ConfigError, _SurplusError),
                       callbacks=[after_trial])
        tries -= share
        mine = [t for t in study.get_trials(deepcopy=False)[before:]
                if all(t.user_attrs.get(k) == v for k, v in me.items())]
        if any(t.user_attrs.get("surplus") for t in mine) or _taken(study) >= s.trials:
            break
        share = sum(t.state == optuna.trial.TrialState.FAIL for t in mine)


def tune(s: TuneSettings, jobs: int = 1, say: Callable[[str], None] = print) -> str:
    """Run the study to `trials` finished trials with `jobs` processes, write best.yaml; return the summary."""
    study = open_study(s)  # checks the storage and the settings before any process starts
    say(f"trpo: tuning {s.env} ({s.total_steps:,} steps a trial, {s.evaluations} evaluations) in study {s.study!r} "
        f"at {s.storage}: {s.trials} trials, {jobs} at a time")
    reporter = TrialReporter(s, study, say)
    if jobs == 1:
        work(s, on_trial=reporter.poll)
    else:
        _work_in_processes(s, jobs, study, reporter)
    return report(s, study)


class WorkerError(RuntimeError):
    """A worker process of `tune(jobs > 1)` failed: its own error line, and where its log is."""


def _work_in_processes(s: TuneSettings, jobs: int, study: Any, reporter: TrialReporter) -> None:
    """`work` in `jobs` processes, their trials said as they end. Interrupted (Ctrl-C, SIGTERM, which reaches this
    process alone), it ends them (`bench.end_processes`: SIGTERM, which fails their trials with the reason, then
    SIGKILL), and marks failed the trials of those killed."""
    from trpo.checkpoint import open_text  # never through a link planted at a log

    procs = []
    logs = [s.study_dir / f"worker_{worker}.log" for worker in range(jobs)]
    for worker, path in enumerate(logs):
        with open_text(path) as log:  # the child holds its own copy of the file
            cmd = [sys.executable, "-m", "trpo.tune", base64.b64encode(pickle.dumps(s)).decode(), str(worker),
                   str(jobs)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    try:
        while any(proc.poll() is None for proc in procs):
            reporter.poll()
            time.sleep(1.0)
    except BaseException as exc:
        from trpo.bench import INTERRUPT_GRACE_S, end_processes

        # Ctrl-C (a plain KeyboardInterrupt) reached the workers too; SIGTERM and errors, this process alone.
        end_processes(procs, INTERRUPT_GRACE_S if type(exc) is KeyboardInterrupt else 0.0)
        end_interrupted(study)  # the trials of those killed
        raise
    reporter.poll()
    failed: dict[str, list[int]] = {}  # a worker's error line -> the workers that said it
    for worker, (proc, path) in enumerate(zip(procs, logs, strict=True)):
        if proc.returncode != 0:
            failed.setdefault(_error_line(path) or f"exited with status {proc.returncode}", []).append(worker)
    if failed:
        end_interrupted(study)  # a worker killed (out of memory, say) leaves its trial running
        raise WorkerError("; ".join(f"worker{'s' * (len(ws) > 1)} {', '.join(map(str, ws))}: {line} (see "
                                    f"{', '.join(str(logs[w]) for w in ws)})" for line, ws in failed.items()))


def _error_line(log: Path) -> str | None:
    """The last `trpo: error:` line a worker wrote to its log (`_worker_main`), without the prefix."""
    with contextlib.suppress(OSError):
        lines = log.read_bytes().decode("utf-8", "replace").splitlines()
        return next((ln.removeprefix("trpo: error: ") for ln in reversed(lines) if ln.startswith("trpo: error: ")),
                    None)
    return None


class TrialReporter:
    """A line per trial as it ends (complete, pruned or failed): its value, its parameters, the best so far, the
    trials finished of those asked for and the time since the search started. Read from the study's storage, so
    that the trials of worker processes (and of other machines sharing the study) are said too; those that ended
    before are not."""

    def __init__(self, s: TuneSettings, study: Any, say: Callable[[str], None]) -> None:
        self.s, self.study, self.say = s, study, say
        self.t0 = time.perf_counter()
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def poll(self) -> None:
        optuna = _optuna()
        from trpo.logger import fmt_time

        states = optuna.trial.TrialState
        trials = [t for t in self.study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        for t in trials:
            if t.number in self.seen or not t.state.is_finished():
                continue
            self.seen.add(t.number)
            ended = [u for u in trials if u.state.is_finished() and u.number in self.seen]
            complete = [u for u in ended if u.state == states.COMPLETE]
            best = max(complete, key=lambda u: u.value, default=None)
            done = sum(u.state in (states.COMPLETE, states.PRUNED) for u in ended)
            params = " ".join(f"{k}={_show(v)}" for k, v in t.params.items())
            self.say(f"trpo: trial {t.number} {_outcome(t, states)} ({params}); best "
                     f"{'none yet' if best is None else f'{best.value:.2f} (trial {best.number})'}; "
                     f"{done}/{self.s.trials} trials finished, {fmt_time(time.perf_counter() - self.t0)} elapsed")


def _outcome(t: Any, states: Any) -> str:
    """What became of an ended trial, in a few words."""
    if t.state == states.COMPLETE:
        return f"complete: {t.value:.2f}"
    if t.state == states.PRUNED and t.intermediate_values:
        step = max(t.intermediate_values)
        return f"pruned at step {step:,} (evaluation {t.intermediate_values[step]:.2f})"
    if t.state == states.FAIL:
        error = " ".join(str(t.user_attrs.get("error", "no reason recorded")).split())
        return f"failed: {error[:120]}"
    return t.state.name.lower()


def best_config(s: TuneSettings, study: Any) -> dict[str, Any] | None:
    """The best complete trial as a `trpo train --config` file's mapping (None before any completes)."""
    optuna = _optuna()
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    # Only the space's fields: a shared study's trials may record others (env_wrappers), which best.yaml must not.
    params = {d.name: best.params[d.name] for d in s.space if d.name in best.params}
    values = TRPOConfig(**coerce_fields({**s.fixed, **params})).to_dict()
    tuned = {k: values[k] for k in (*s.fixed, *params)}
    return {"env": s.env, "total_steps": s.total_steps, "seed": s.seed, **tuned}


def report(s: TuneSettings, study: Any) -> str:
    """The summary: trials by state, the best ten, and where best.yaml is (written here)."""
    optuna = _optuna()
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]  # never trained
    count = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    lines = [f"study {s.study!r}: " + ", ".join(f"{n} {state.name.lower()}" for state, n in count.items() if n)]
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: -t.value)
    names = [d.name for d in s.space]
    lines += ["", "| trial | value | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t in done[:10]:
        lines.append(f"| {t.number} | {t.value:.2f} | " + " | ".join(_show(t.params.get(n)) for n in names) + " |")
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs]
    lines += [f"trial {t.number} failed: {t.user_attrs['error']}" for t in failed[-5:]]
    best = best_config(s, study)
    if best is not None:
        from trpo.checkpoint import write_text_atomic  # never through a link planted at best.yaml

        path = s.study_dir / "best.yaml"
        write_text_atomic(path, f"# trpo tune: study {s.study!r}, trial {study.best_trial.number}, final "
                          f"evaluation {study.best_trial.value:.2f}\n" + yaml.safe_dump(best, sort_keys=False))
        lines += ["", f"best: trial {study.best_trial.number} ({study.best_trial.value:.2f}) -> {path}; "
                  f"train it: trpo train --config {path}"]
    return "\n".join(lines)


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _number_kind(name: str) -> type | None:
    """int or float for a numeric field (optional ones too), None for the others."""
    hint = get_type_hints(TRPOConfig)[name]
    for kind in (int, float):
        if hint in (kind, kind | None):
            return kind
    return None


def _worker_main(argv: list[str]) -> int:
    """One worker process of `tune(..., jobs > 1)`, its output in its log: SIGTERM fails its trial as Ctrl-C does
    (the parent sends it), and an error ends with one `trpo: error:` line that the parent reports."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        work(pickle.loads(base64.b64decode(argv[0])), int(argv[1]), int(argv[2]))
    except KeyboardInterrupt:
        return 143
    except Exception as exc:
        import traceback

        traceback.print_exc()  # for the log; the line below is what the parent says
        print(f"trpo: error: {' '.join(str(exc).split()) or type(exc).__name__}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
