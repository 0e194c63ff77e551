"""`trpo bench`: envs x seeds x a budget, each run an ordinary run directory made by `trpo train`, and the table.

    trpo bench --env Hopper-v5 Walker2d-v5 --seeds 0 1 2 3 4 --steps 1000000 --jobs 2
    trpo bench --env Hopper-v5 --label ppo --set update_rule=ppo --shard 1/3
    trpo bench --env Hopper-v5 --summary                 # the table only, from what is done
    trpo bench --env Swimmer-v5 --peer sb3-contrib       # a peer (trpo/peers.py), same seeds and budget

Runs go to OUT/ENV/LABEL-sSEED. Run again after an interruption: finished runs (an eval.json at the budget) are
skipped, started ones continue from their last checkpoint (`trpo train --resume`), the rest start. `--shard i/k`
takes every k-th run from the i-th, so k sittings (or machines sharing the directory) split one benchmark. Each run
trains on one core (`vector_mode: sync`, the same runs as the presets' worker processes give, unless `--set
vector_mode=...`), `--jobs` at a time, in its own process. The table per env and label: final deterministic
evaluation over 10 episodes, mean, std, IQM with a 95% stratified-bootstrap confidence interval (rliable, in the
bench extra), min and max across seeds, the training time to the target (`TARGETS`, else the best published
figure; `time_to`: median over the seeds whose training episodes reached it, and how many did), beside the
published TRPO figures (sb3-contrib's docs, rl-zoo's benchmark, Tianshou's and OmniSafe's).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trpo.checkpoint import open_text
from trpo.config import coerce_fields
from trpo.errors import ConfigError
from trpo.logger import fmt_time
from trpo.resolve import PRESET_STEPS, preset_name_for, resolve_config

# sb3-contrib's published TRPO (1M steps, 3 seeds, MuJoCo v3) and rl-baselines3-zoo's single runs.
# Published TRPO returns, as (sb3-contrib's docs: 3 seeds, MuJoCo v3; rl-zoo's benchmark.md: 1 run; Tianshou's
# examples/mujoco/README.md: 1M steps, 10 seeds, v3, the best point of the mean test curve; OmniSafe's TRPO
# benchmark: 1M steps, 5 seeds, as quoted in issue 37). None: no figure.
PUBLISHED: dict[str, tuple[float | None, float | None, float | None, float | None]] = {
    "HalfCheetah": (1803, 1785, 4471.2, 4321), "Hopper": (3372, 3618, 2046.0, 3484),
    "Walker2d": (4502, 4933, 3826.7, None), "Ant": (3554, 4982, 2866.7, 4673), "Swimmer": (359, 365.7, 40.9, None),
    "Humanoid": (None, None, 810.1, 1618), "Reacher": (None, None, -5.1, None),
    "InvertedPendulum": (None, None, 1000.0, None), "InvertedDoublePendulum": (None, None, 8435.2, None),
    "CartPole": (None, 500, None, None), "Pendulum": (None, -174.6, None, None), "Acrobot": (None, -83.1, None, None),
}
# The targets of the table's "time to target": issue 37's (the best published figure, or the one with more than one
# run behind it where the best is a single run's); elsewhere the best published figure.
TARGETS: dict[str, float] = {"HalfCheetah": 4471.2, "Hopper": 3484, "Walker2d": 4933, "Ant": 4673, "Swimmer": 359,
                             "Humanoid": 1618}
EVAL_EPISODES = 10
STOP_WAIT_S = 60.0  # after SIGTERM, for the runs to save their checkpoints and exit before they are killed
INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, which the runs received too, before they are sent SIGTERM


def run_dir(out: Path, env: str, label: str, seed: int) -> Path:
    return out / env / f"{label}-s{seed}"


def budget(env: str, steps: int | None) -> int:
    """The env steps of each run: `steps`, else the env's preset budget (1M without a preset), as `trpo train`."""
    return steps if steps else PRESET_STEPS.get(preset_name_for(env) or "", 1_000_000)


class DamagedResultError(ValueError):
    """A run's eval.json that cannot be read as one (cut short, edited, not JSON); the message says why."""


def read_result(path: Path) -> dict[str, Any] | None:
    """The run's eval.json as {"step": int, "mean_return": float, ...}; None where there is none (a file that is
    not there); DamagedResultError where it is there but is no result (not UTF-8 JSON, not an object with an integer
    step and a finite mean_return), so that a damaged run is said as such instead of ending the table."""
    result = path / "eval.json"
    if not result.exists():
        return None
    try:
        record = json.loads(result.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # a directory, bytes that are not UTF-8, not JSON
        raise DamagedResultError(f"{result} is unreadable ({type(exc).__name__})") from None
    step = record.get("step") if isinstance(record, dict) else None
    value = record.get("mean_return") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or isinstance(value, bool) or \
            not isinstance(value, int | float) or not math.isfinite(value):
        raise DamagedResultError(f"{result} holds no step and final evaluation")
    return record


def time_to(path: Path, target: float, window: int = 10) -> float | None:
    """Training seconds until the run's training episodes first reach `target`: the mean return of the episodes of its
    last `window` updates that ended some (the metrics rows' episode_return_mean), the time summed over the rows
    as their env steps / fps (collection and updates, without evaluation or start-up); None if never, or without
    rows. Training episodes act stochastically, so this is a conservative time to the final evaluation's return."""
    returns: list[float] = []
    seconds, previous = 0.0, 0
    try:
        lines = (path / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        row = json.loads(line)
        step, fps = int(row.get("step", previous)), float(row.get("fps") or 0.0)
        if fps > 0:
            seconds += (step - previous) / fps
        previous = step
        value = row.get("episode_return_mean")
        if row.get("episodes") and isinstance(value, int | float) and math.isfinite(value):
            returns = [*returns[-(window - 1):], float(value)]
            if len(returns) == window and sum(returns) / window >= target:
                return seconds
    return None


def time_to_target(paths: Sequence[Path], target: float | None) -> str:
    """The table's cell: the median of time_to over the seeds that reached the target, and how many did."""
    if target is None:
        return "-"
    times = [t for t in (time_to(p, target) for p in paths) if t is not None]
    return f"{fmt_time(float(np.median(times)))} ({len(times)}/{len(paths)})" if times else f"- (0/{len(paths)})"


def finished(path: Path, steps: int) -> bool:
    """Whether the run reached `steps` with its final evaluation; a damaged eval.json is no evaluation (the run
    is continued, which evaluates it again)."""
    try:
        record = read_result(path)
    except DamagedResultError:
        return False
    return record is not None and record["step"] >= steps


def field_values(items: Sequence[str]) -> dict[str, str]:
    """FIELD=VALUE items (`--set`) as a mapping; ConfigError for an item without '='."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r} is not FIELD=VALUE")
        values[name.strip()] = value
    return values


def train_flags(items: Sequence[str]) -> tuple[list[str], str]:
    """FIELD=VALUE items as `trpo train` flags (booleans as --field / --no-field, checked against the config),
    and the vector mode the runs use: 'sync' (one core per run) unless the items set one."""
    values = field_values(items)
    mode = values.pop("vector_mode", "sync")
    flags = []
    for name, value in coerce_fields(values).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, values[name]]
    return flags, mode


class Processes:
    """The runs' processes alive now. SIGTERM reaches this process alone (Ctrl-C the whole process group), so
    `stop` ends them itself (`end_processes`). No run starts after `stop`."""

    def __init__(self) -> None:
        self.alive: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, cmd: list[str], log: Any) -> int | None:
        """The exit status of `cmd` (output to `log`), or None if it was not started because of `stop`."""
        with self.lock:
            if self.stopping:
                return None
            proc: subprocess.Popen[bytes] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            self.alive.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.alive.discard(proc)

    def stop(self, grace: float = 0.0) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.alive)
        end_processes(procs, grace)


def end_processes(procs: Sequence[subprocess.Popen[Any]], grace: float = 0.0) -> None:
    """End child processes, waiting a bounded time: `grace` seconds to end on their own (where Ctrl-C reached them
    too), then SIGTERM (trpo's processes stop at their checkpoint and say so), then SIGKILL for any still there
    after STOP_WAIT_S."""
    left = _still_running(procs, grace)
    for proc in left:
        proc.terminate()
    for proc in _still_running(left, STOP_WAIT_S):
        proc.kill()
        proc.wait()


def _still_running(procs: Sequence[subprocess.Popen[Any]], seconds: float) -> list[subprocess.Popen[Any]]:
    deadline = time.monotonic() + seconds
    left = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            left.append(proc)
    return left


def run_one(path: Path, env: str, seed: int, steps: int, flags: list[str], mode: str, peer: str = "",
            procs: Processes | None = None) -> str:
    """One run to its budget in a fresh process (continued if it was started before); a few words saying how it
    went: "FAILED ..." where it failed, "stopped ..." where `procs` was stopped."""
    if finished(path, steps):
        return f"done already ({_result(path)})"
    if peer:  # trpo.peers continues from its own checkpoint
        cmd = ["-m", "trpo.peers", peer, "--env", env, "--seed", str(seed), "--steps", str(steps), "--run-dir",
               str(path), *flags]
    else:
        if (path / "config.yaml").is_file():  # started before: continue it (from the start if it has no checkpoint)
            # --env: the env this bench names, so that a module:EnvId id is imported as named (docs/security.md)
            cmd = ["train", "--resume", str(path), "--env", env, "--total-steps", str(steps)]
        else:
            cmd = ["train", "--env", env, "--seed", str(seed), "--total-steps", str(steps), "--run-dir", str(path),
                   "--eval-episodes", str(EVAL_EPISODES), *flags]
        cmd = ["-m", "trpo.cli", *cmd, "--vector-mode", mode, "--no-progress"]
    path.parent.mkdir(parents=True, exist_ok=True)
    procs = procs or Processes()
    with open_text(path.parent / f"{path.name}.log") as log:
        code = procs.run([sys.executable, *cmd], log)
    if procs.stopping:
        return "stopped"
    if code != 0:
        return f"FAILED (exit {code}, see {path}.log)"
    return _result(path)


def _result(path: Path) -> str:
    try:
        record = read_result(path)
    except DamagedResultError as exc:
        return f"FAILED ({exc})"
    if record is None:
        return f"FAILED (no {path / 'eval.json'} written)"
    return f"final evaluation {record['mean_return']:.1f}"


class _Said:
    """Each run's start and end, said one line at a time from the pool's threads, with the runs ended so far."""

    def __init__(self, total: int, say: Callable[[str], None], procs: Processes) -> None:
        self.total, self.say, self.procs = total, say, procs
        self.ended = 0
        self.failed: list[str] = []  # the failed runs, each with its outcome
        self.lock = threading.Lock()

    def run(self, path: Path, env: str, seed: int, label: str, steps: int, flags: list[str], mode: str,
            peer: str) -> None:
        run = f"{env} seed {seed} ({label})"
        if not finished(path, steps):
            how = "resumed" if (path / "config.yaml").is_file() else "started"
            with self.lock:
                self.say(f"{how}: {run}, {steps:,} steps -> {path}")
        t0 = time.perf_counter()
        outcome = run_one(path, env, seed, steps, flags, mode, peer, self.procs)
        with self.lock:
            if outcome == "stopped":
                self.say(f"stopped: {run}; the same command continues it")
                return
            self.ended += 1
            if outcome.startswith("FAILED"):
                self.failed.append(f"{run} {outcome.removeprefix('FAILED ')}")
            failed = f", {len(self.failed)} failed" if self.failed else ""
            skipped = outcome.startswith("done already")
            took = "" if skipped else f" in {fmt_time(time.perf_counter() - t0)}"
            self.say(f"{'skipped' if skipped else 'ended'}: {run}: {outcome}{took}; {self.ended}/{self.total} runs "
                     f"ended{failed}")


def iqm_with_ci(values: list[float]) -> str:
    """IQM and its 95% stratified-bootstrap interval from rliable (Agarwal et al. 2021)."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except (ImportError, TypeError):  # TypeError: arch 7 (rliable's bootstrap) under pandas 3
        return f"{plain_iqm(values):.1f} (CI: pip install 'trpo[bench]')"
    scores = {"x": np.asarray(values, dtype=float)[:, None]}
    np.random.seed(0)  # arch's bootstrap (under rliable) also draws from numpy's global generator
    with warnings.catch_warnings():  # arch deprecates the random_state rliable hands it: rliable's to change
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        point, ci = rly.get_interval_estimates(scores, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=2000,
                                               random_state=np.random.RandomState(0))  # the same table every time
    return f"{point['x'][0]:.1f} [{ci['x'][0, 0]:.1f}, {ci['x'][1, 0]:.1f}]"


def plain_iqm(values: list[float]) -> float:
    xs = np.sort(np.asarray(values, dtype=float))
    k = len(xs) // 4
    return float(xs[k : len(xs) - k].mean())


def summary(out: Path, envs: Sequence[str], steps: int | None = None) -> str:
    """The markdown table of the finished runs under `out` (those that reached the budget) for these envs, and a
    line under it for each run whose eval.json is damaged. Directories not named LABEL-sSEED are not runs."""
    distinct("--env", envs)
    lines = ["| env | label | steps | seeds | final eval per seed | mean | std | IQM [95% CI] | min | max | "
             "time to target (seeds) | sb3-contrib | rl-zoo | Tianshou | OmniSafe |", "|---" * 15 + "|"]
    damaged = []
    for env in envs:
        env_steps = budget(env, steps)
        labels: dict[str, list[tuple[int, float, Path]]] = {}
        for path in sorted((out / env).glob("*-s*")):
            label, _, seed = path.name.rpartition("-s")
            if not (label and seed.isdigit() and path.is_dir()):  # a run's log, or a directory of the user's
                continue
            try:
                record = read_result(path)
            except DamagedResultError as exc:
                damaged.append(f"damaged, not counted: {exc}")
                continue
            if record is not None and record["step"] >= env_steps:
                labels.setdefault(label, []).append((int(seed), record["mean_return"], path))
        name = env.rsplit("/", 1)[-1].rsplit("-v", 1)[0]
        figures = PUBLISHED.get(name, (None,) * 4)
        published = " | ".join(f"{v:g}" if v is not None else "-" for v in figures)
        target = TARGETS.get(name, max((v for v in figures if v is not None), default=None))
        for label, runs in labels.items():
            runs.sort()
            values = [v for _, v, _ in runs]
            lines.append(f"| {env} | {label} | {env_steps:,} | {' '.join(str(s) for s, _, _ in runs)} | "
                         f"{', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} | {np.std(values):.1f} | "
                         f"{iqm_with_ci(values)} | {min(values):.1f} | {max(values):.1f} | "
                         f"{time_to_target([p for _, _, p in runs], target)} | {published} |")
    return "\n".join(lines + damaged)


def distinct(flag: str, values: Sequence[Any]) -> None:
    """ConfigError for a value given twice: two runs of one env and seed would share one run directory."""
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"{flag} names {', '.join(repeated)} more than once; each run has one directory, so give "
                          "each once")


def bench(envs: Sequence[str], seeds: Sequence[int], steps: int | None = None, *, label: str | None = None,
          peer: str = "", sets: Sequence[str] = (), preset: str | None = None, jobs: int = 2, shard: str = "1/1",
          out: Path = Path("runs/bench"), say: Callable[[str], None] = print) -> tuple[str, list[str]]:
    """Run (or continue) the benchmark's runs of this shard, `jobs` at a time, saying when each starts and how it
    ended; return the table and the runs that failed (each with its outcome).
    `preset`: as `trpo train --preset` (default: each env's own). Bad arguments raise ConfigError before anything
    runs. An interrupt (Ctrl-C, SIGTERM) stops the runs in progress (`Processes.stop`) and is raised again."""
    distinct("--env", envs)
    distinct("--seeds", seeds)
    flags, mode = train_flags(sets)
    if preset is not None:
        if peer:
            raise ConfigError("--preset applies to trpo's runs; a peer runs its own published settings")
        for env in envs:
            resolve_config(env, preset)  # an unknown preset: ConfigError now, not in every run
        flags += ["--preset", preset]
    if peer:
        from trpo.peers import PEERS

        if peer not in PEERS:
            raise ConfigError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
        peer_sets = field_values(sets)
        if set(peer_sets) - {"env_kwargs"}:
            raise ConfigError("--set applies to trpo's runs; a peer runs its own published settings (env_kwargs, "
                              "the env's own options, apply to both)")
        flags = ["--env-kwargs", json.dumps(coerce_fields(peer_sets).get("env_kwargs") or {})]
        for env in envs:
            try:
                PEERS[peer][0](env)
            except ValueError as exc:
                raise ConfigError(f"--peer {peer}: {exc}") from None
    try:
        index, count = (int(x) for x in shard.split("/"))
        if not 1 <= index <= count:
            raise ValueError
    except ValueError:
        raise ConfigError(f"shard must be I/K with 1 <= I <= K, got {shard!r}") from None
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    name = label or peer or "trpo"
    runs = [(run_dir(out, env, name, seed), env, seed) for env in envs for seed in seeds][index - 1 :: count]
    say(f"# {len(runs)} runs (shard {shard}), {jobs} at a time, to "
        + ", ".join(f"{env} {budget(env, steps):,} steps" for env in envs))
    procs = Processes()
    said = _Said(len(runs), say, procs)
    pool = ThreadPoolExecutor(max_workers=jobs)

    def one(run: tuple[Path, str, int]) -> None:
        path, env, seed = run
        said.run(path, env, seed, name, budget(env, steps), flags, mode, peer)

    try:
        list(pool.map(one, runs))  # list(): a run's exception is raised here
    except BaseException as exc:  # else the pool's threads wait for runs that go on without us
        # Ctrl-C (a plain KeyboardInterrupt) reached the runs' process group too; SIGTERM and errors, us alone.
        procs.stop(grace=INTERRUPT_GRACE_S if type(exc) is KeyboardInterrupt else 0.0)
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    return summary(out, envs, steps), said.failed
