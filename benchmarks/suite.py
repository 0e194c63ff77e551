"""Learning benchmark: envs x seeds x a budget, each run an ordinary run directory made by `trpo train`.

    .venv/bin/python benchmarks/suite.py --env Hopper-v5 Walker2d-v5 --seeds 0 1 2 3 4 --steps 1000000 --jobs 2
    .venv/bin/python benchmarks/suite.py --env Hopper-v5 --label ppo --set update_rule=ppo --shard 1/3
    .venv/bin/python benchmarks/suite.py --env Hopper-v5 --summary          # the table only, from what is done
    .venv/bin/python benchmarks/suite.py --env Swimmer-v5 --peer sb3-contrib   # the peer, same seeds and budget

Runs go to OUT/ENV/LABEL-sSEED (OUT default runs/suite). Run again after an interruption: finished runs (an
eval.json at the budget) are skipped, started ones continue from their last checkpoint (`trpo train --resume`),
the rest start. `--shard i/k` takes every k-th run from the i-th, so k sittings (or machines sharing the
directory) split one benchmark. Each run trains on one core (`--vector-mode sync`, the same runs as the presets'
worker processes give, unless `--set vector_mode=...`), `--jobs` at a time. `--set` takes any config field
(booleans as true/false). The table per env and label: final deterministic evaluation over 10
episodes, mean, std, IQM with a 95% stratified-bootstrap confidence interval (rliable, in the bench extra), min
and max across seeds, beside the published TRPO figures (sb3-contrib's docs, rl-zoo's benchmark). `--peer
sb3-contrib` runs sb3-contrib's TRPO with rl-zoo's settings instead (benchmarks/peer_sb3.py), label `sb3-contrib`,
as run directories of the same shape: its rows sit in the same table and its curves in the same `trpo plot`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trpo.config import ConfigError, coerce_fields

# sb3-contrib's published TRPO (1M steps, 3 seeds, MuJoCo v3) and rl-baselines3-zoo's single runs.
PUBLISHED = {
    "HalfCheetah": (1803, 1785), "Hopper": (3372, 3618), "Walker2d": (4502, 4933), "Ant": (3554, 4982),
    "Swimmer": (359, 365.7), "CartPole": (None, 500), "Pendulum": (None, -174.6), "Acrobot": (None, -83.1),
}


def run_dir(out: Path, env: str, label: str, seed: int) -> Path:
    return out / env / f"{label}-s{seed}"


def finished(path: Path, steps: int) -> bool:
    result = path / "eval.json"
    return result.is_file() and json.loads(result.read_text()).get("step", 0) >= steps


def train_flags(items: list[str]) -> tuple[list[str], str]:
    """FIELD=VALUE items as `trpo train` flags (booleans as --field / --no-field, checked against the config),
    and the vector mode the runs use: 'sync' (one core per run, the same runs as the presets' worker process
    gives) unless the items set one."""
    values = dict(item.split("=", 1) for item in items)
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
    if finished(path, steps):
        return f"done already: {path}"
    if peer:  # peer_sb3.py continues from its own checkpoint
        cmd = [str(Path(__file__).with_name("peer_sb3.py")), "--env", env, "--seed", str(seed), "--steps", str(steps),
               "--run-dir", str(path)]
    elif (path / "config.yaml").is_file():  # started before: continue it (from the start if it has no checkpoint)
        cmd = ["train", "--resume", str(path), "--total-steps", str(steps)]
    else:
        cmd = ["train", "--env", env, "--seed", str(seed), "--total-steps", str(steps), "--run-dir", str(path),
               "--eval-episodes", "10", *flags]
    if not peer:
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
        return f"{plain_iqm(values):.1f} (CI: pip install -e '.[bench]')"
    scores = {"x": np.asarray(values, dtype=float)[:, None]}
    np.random.seed(0)  # arch's bootstrap (under rliable) also draws from numpy's global generator
    point, ci = rly.get_interval_estimates(scores, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=2000,
                                           random_state=np.random.RandomState(0))  # the same table every time
    return f"{point['x'][0]:.1f} [{ci['x'][0, 0]:.1f}, {ci['x'][1, 0]:.1f}]"


def plain_iqm(values: list[float]) -> float:
    xs = np.sort(np.asarray(values, dtype=float))
    k = len(xs) // 4
    return float(xs[k : len(xs) - k].mean())


def summary(out: Path, envs: list[str], steps: int) -> None:
    print("\n| env | label | steps | seeds | final eval per seed | mean | std | IQM [95% CI] | min | max | "
          "sb3-contrib | rl-zoo |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env in envs:
        labels: dict[str, list[tuple[int, float]]] = {}
        for result in sorted((out / env).glob("*-s*/eval.json")):
            record = json.loads(result.read_text())
            if record.get("step", 0) < steps:
                continue
            label, _, seed = result.parent.name.rpartition("-s")
            labels.setdefault(label, []).append((int(seed), record["mean_return"]))
        sb3, zoo = PUBLISHED.get(env.rsplit("-v", 1)[0], (None, None))
        for label, runs in labels.items():
            runs.sort()
            values = [v for _, v in runs]
            print(f"| {env} | {label} | {steps:,} | {' '.join(str(s) for s, _ in runs)} | "
                  f"{', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} | {np.std(values):.1f} | "
                  f"{iqm_with_ci(values)} | {min(values):.1f} | {max(values):.1f} | {sb3 or '-'} | {zoo or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--label", default=None, help="names this configuration's runs (default trpo, or the peer)")
    parser.add_argument("--peer", choices=["sb3-contrib"], default="",
                        help="run sb3-contrib's TRPO with rl-zoo's settings instead of trpo")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config fields, as for trpo train")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shard", default="1/1", metavar="I/K", help="run only every K-th run, from the I-th")
    parser.add_argument("--out", type=Path, default=Path("runs/suite"))
    parser.add_argument("--summary", action="store_true", help="print the table of finished runs, train nothing")
    args = parser.parse_args()

    try:
        flags, mode = train_flags(args.set)
    except (ConfigError, ValueError) as exc:
        parser.error(f"--set: {exc}")
    if args.peer and args.set:
        parser.error("--set applies to trpo's runs; --peer runs rl-zoo's settings as published")
    if args.peer:
        from peer_sb3 import zoo_settings  # beside this script

        for env in args.env:
            try:
                zoo_settings(env)
            except ValueError as exc:
                parser.error(f"--peer: {exc}")
    label = args.label or args.peer or "trpo"
    index, count = (int(x) for x in args.shard.split("/"))
    if not args.summary:
        jobs = [(run_dir(args.out, env, label, seed), env, seed) for env in args.env for seed in args.seeds]
        jobs = jobs[index - 1 :: count]
        print(f"# {len(jobs)} runs (shard {args.shard}), {args.jobs} at a time, {args.steps:,} steps each", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for line in pool.map(lambda job: run_one(*job, args.steps, flags, mode, args.peer), jobs):
                print(line, flush=True)
    summary(args.out, args.env, args.steps)


if __name__ == "__main__":
    main()
