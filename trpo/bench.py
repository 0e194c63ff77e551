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
bench extra), min and max across seeds, beside the published TRPO figures (sb3-contrib's docs, rl-zoo's benchmark).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trpo.config import PRESET_STEPS, ConfigError, coerce_fields, preset_name_for, resolve_config

# sb3-contrib's published TRPO (1M steps, 3 seeds, MuJoCo v3) and rl-baselines3-zoo's single runs.
PUBLISHED = {
    "HalfCheetah": (1803, 1785), "Hopper": (3372, 3618), "Walker2d": (4502, 4933), "Ant": (3554, 4982),
    "Swimmer": (359, 365.7), "CartPole": (None, 500), "Pendulum": (None, -174.6), "Acrobot": (None, -83.1),
}
EVAL_EPISODES = 10


def run_dir(out: Path, env: str, label: str, seed: int) -> Path:
    return out / env / f"{label}-s{seed}"


def budget(env: str, steps: int | None) -> int:
    """The env steps of each run: `steps`, else the env's preset budget (1M without a preset), as `trpo train`."""
    return steps if steps else PRESET_STEPS.get(preset_name_for(env) or "", 1_000_000)


def finished(path: Path, steps: int) -> bool:
    result = path / "eval.json"
    return result.is_file() and json.loads(result.read_text()).get("step", 0) >= steps


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


def run_one(path: Path, env: str, seed: int, steps: int, flags: list[str], mode: str, peer: str = "") -> str:
    """One run to its budget in a fresh process (continued if it was started before); a line saying how it went."""
    if finished(path, steps):
        return f"done already: {path}"
    if peer:  # trpo.peers continues from its own checkpoint
        cmd = ["-m", "trpo.peers", peer, "--env", env, "--seed", str(seed), "--steps", str(steps), "--run-dir",
               str(path), *flags]
    else:
        if (path / "config.yaml").is_file():  # started before: continue it (from the start if it has no checkpoint)
            cmd = ["train", "--resume", str(path), "--total-steps", str(steps)]
        else:
            cmd = ["train", "--env", env, "--seed", str(seed), "--total-steps", str(steps), "--run-dir", str(path),
                   "--eval-episodes", str(EVAL_EPISODES), *flags]
        cmd = ["-m", "trpo.cli", *cmd, "--vector-mode", mode, "--no-progress"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.log", "a") as log:
        code = subprocess.run([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        return f"FAILED (exit {code}, see {path}.log): {path}"
    return f"{path}: {json.loads((path / 'eval.json').read_text())['mean_return']:.1f}"


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
    """The markdown table of the finished runs under `out` (those that reached the budget) for these envs."""
    lines = ["| env | label | steps | seeds | final eval per seed | mean | std | IQM [95% CI] | min | max | "
             "sb3-contrib | rl-zoo |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for env in envs:
        env_steps = budget(env, steps)
        labels: dict[str, list[tuple[int, float]]] = {}
        for result in sorted((out / env).glob("*-s*/eval.json")):
            record = json.loads(result.read_text())
            if record.get("step", 0) < env_steps:
                continue
            label, _, seed = result.parent.name.rpartition("-s")
            labels.setdefault(label, []).append((int(seed), record["mean_return"]))
        sb3, zoo = PUBLISHED.get(env.rsplit("/", 1)[-1].rsplit("-v", 1)[0], (None, None))
        for label, runs in labels.items():
            runs.sort()
            values = [v for _, v in runs]
            lines.append(f"| {env} | {label} | {env_steps:,} | {' '.join(str(s) for s, _ in runs)} | "
                         f"{', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} | {np.std(values):.1f} | "
                         f"{iqm_with_ci(values)} | {min(values):.1f} | {max(values):.1f} | {sb3 or '-'} | "
                         f"{zoo or '-'} |")
    return "\n".join(lines)


def bench(envs: Sequence[str], seeds: Sequence[int], steps: int | None = None, *, label: str | None = None,
          peer: str = "", sets: Sequence[str] = (), preset: str | None = None, jobs: int = 2, shard: str = "1/1",
          out: Path = Path("runs/bench"), say: Callable[[str], None] = print) -> str:
    """Run (or continue) the benchmark's runs of this shard, `jobs` at a time, saying each outcome; return the table.
    `preset`: as `trpo train --preset` (default: each env's own). Bad arguments raise ConfigError before anything
    runs."""
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
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for line in pool.map(lambda run: run_one(*run, budget(run[1], steps), flags, mode, peer), runs):
            say(line)
    return summary(out, envs, steps)
