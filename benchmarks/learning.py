"""Multi-seed learning check: train each env with its shipped preset at a fixed budget, then evaluate.

    .venv/bin/python benchmarks/learning.py --env CartPole-v1 Pendulum-v1 Acrobot-v1 --seeds 0 1 2

Prints one line per run and a markdown table per env: the final deterministic evaluation over 10 episodes,
per seed, with mean and interquartile mean across seeds (IQM: robust to one outlying seed, as rliable argues),
next to rl-zoo's published TRPO figure.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

# rl-baselines3-zoo's TRPO results (one run each) at the budgets below.
RL_ZOO = {"CartPole-v1": 500.0, "Pendulum-v1": -174.6, "Acrobot-v1": -83.1, "MountainCarContinuous-v0": 92.5}
BUDGET = {"CartPole-v1": 100_000, "Pendulum-v1": 100_000, "Acrobot-v1": 100_000, "MountainCarContinuous-v0": 50_000}


def train_one(env_id: str, seed: int, steps: int, overrides: dict[str, Any]) -> dict[str, Any]:
    from trpo import TRPO
    from trpo.resolve import resolve_config

    config, _ = resolve_config(env_id, "auto", overrides=overrides)
    start = time.perf_counter()
    agent = TRPO(env_id, config=config, seed=seed)
    agent.learn(steps)
    seconds = time.perf_counter() - start
    result = agent.evaluate(10)
    agent.close()
    return {"env": env_id, "seed": seed, "steps": steps, "mean_return": result["mean_return"],
            "std_return": result["std_return"], "train_seconds": round(seconds, 1)}


def iqm(values: list[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (all values when there are fewer than 4)."""
    xs = np.sort(np.asarray(values))
    n = len(xs)
    if n < 4:
        return float(xs.mean())
    return float(xs[n // 4 : n - n // 4].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", nargs="+", default=["CartPole-v1", "Pendulum-v1", "Acrobot-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="budget (default: rl-zoo's for the env)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel training processes")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    jobs = [(env, seed, args.steps or BUDGET.get(env, 100_000), overrides) for env in args.env for seed in args.seeds]
    print(f"# trpo learning check, {time.strftime('%Y-%m-%d')}, {len(jobs)} runs, {args.jobs} processes")
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(train_one, *zip(*jobs, strict=True)):
            print(json.dumps(res), flush=True)
            results.append(res)

    print("\n| env | steps | seeds | return per seed | mean | IQM | rl-zoo TRPO |")
    print("|---|---|---|---|---|---|---|")
    for env in args.env:
        rows = [r for r in results if r["env"] == env]
        rets = [r["mean_return"] for r in rows]
        per_seed = ", ".join(f"{r['mean_return']:.1f}" for r in rows)
        seeds = " ".join(str(r["seed"]) for r in rows)
        print(f"| {env} | {rows[0]['steps']:,} | {seeds} | {per_seed} | {np.mean(rets):.1f} | {iqm(rets):.1f} | "
              f"{RL_ZOO.get(env, float('nan'))} |")


if __name__ == "__main__":
    main()
