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

The search space and the settings are trpo/tune_space.py's, the study's storage and directory and the count of its
trials trpo/tune_study.py's; this module runs the trials (`objective`, `work`, worker processes) and says how they
went (`TrialReporter`, `report`, best.yaml). It must not touch the space's checks or the storage's bookkeeping, and
uses the agent only through its public calls (TRPO, train_until, evaluate).
"""

from __future__ import annotations

import base64
import contextlib
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from trpo.config import TRPOConfig, coerce_fields
from trpo.errors import ConfigError
from trpo.resolve import resolve_config
from trpo.tune_space import DEFAULT_SPACE as DEFAULT_SPACE
from trpo.tune_space import RUN_FIELDS as RUN_FIELDS
from trpo.tune_space import Dimension as Dimension
from trpo.tune_space import TuneSettings
from trpo.tune_space import parse_space as parse_space
from trpo.tune_space import settings_for as settings_for
from trpo.tune_study import MARKER as MARKER
from trpo.tune_study import _claim, _optuna, _owner, _SurplusError, _taken, end_interrupted, open_study
from trpo.tune_study import claim_study_dir as claim_study_dir


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
