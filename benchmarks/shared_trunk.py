"""Shared against separate actor-critic networks on the classic tasks (docs/scale.md), each task's preset at its
budget (MinAtar Breakout's on request: the CNN), seed by seed, the variants interleaved (so a change of the
machine's load falls on all of them alike):

    .venv/bin/python benchmarks/shared_trunk.py                                  # 3 tasks x 3 variants x 5 seeds
    .venv/bin/python benchmarks/shared_trunk.py --env CartPole-v1 --seeds 0 1 --steps 20000
    .venv/bin/python benchmarks/shared_trunk.py --env MinAtar/Breakout-v1 --seeds 0 --steps 30000   # the CNN's costs

Variants: `separate` (the default: an actor and a critic of their own), `shared` (`shared_trunk`: the value fit
trains the trunk too, steered by its KL term and checked against the trust region again), `shared-head`
(`shared_trunk` with `value_fit_trunk: false`: the value fit trains the value head alone, sb3-contrib's CnnPolicy).
Envs are stepped in this process (`vector_mode: sync`), one torch thread. Each row: the final deterministic
evaluation (10 episodes) per seed and their mean; the mean wall-clock seconds of `learn`; the median over all
updates of all seeds of the value fit's time (`time_value`, with a shared trunk's recheck) and of the policy
step's (`time_policy`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

TASKS = {"CartPole-v1": 50_000, "Acrobot-v1": 100_000, "Pendulum-v1": 200_000, "MinAtar/Breakout-v1": 200_000}
CLASSIC = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")  # the default: minutes, not hours
VARIANTS: dict[str, dict[str, Any]] = {
    "separate": {},
    "shared": {"shared_trunk": True},
    "shared-head": {"shared_trunk": True, "value_fit_trunk": False},
}


def run(env_id: str, variant: str, seed: int, steps: int) -> tuple[float, float, list[float], list[float]]:
    """(final evaluation, seconds of learn, time_value per update, time_policy per update) of one run."""
    from trpo import TRPO

    agent = TRPO(env_id, seed=seed, vector_mode="sync", torch_threads=1, **VARIANTS[variant])
    started = time.perf_counter()
    agent.learn(steps)
    elapsed = time.perf_counter() - started
    final = agent.evaluate(10)["mean_return"]
    agent.close()
    return final, elapsed, [r["time_value"] for r in agent.history], [r["time_policy"] for r in agent.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", choices=list(TASKS), default=list(CLASSIC))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (default: the task's budget)")
    args = parser.parse_args()
    print("| task, budget | variant | final evaluation per seed | mean | learn s | value fit s | policy step s |")
    print("|---|---|---|---|---|---|---|")
    for env_id in args.env:
        steps = args.steps or TASKS[env_id]
        results: dict[str, list[tuple[float, float, list[float], list[float]]]] = {v: [] for v in args.variants}
        for seed in args.seeds:
            for variant in args.variants:
                results[variant].append(run(env_id, variant, seed, steps))
        for variant, runs in results.items():
            finals = [r[0] for r in runs]
            per_seed = ", ".join(f"{f:.1f}" for f in finals)
            value = statistics.median(t for r in runs for t in r[2])
            policy = statistics.median(t for r in runs for t in r[3])
            print(f"| {env_id}, {steps // 1000}k | {variant} | {per_seed} | {statistics.mean(finals):.1f} | "
                  f"{statistics.mean(r[1] for r in runs):.1f} | {value:.4f} | {policy:.4f} |", flush=True)


if __name__ == "__main__":
    main()
