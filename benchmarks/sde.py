"""gSDE (use_sde) against the plain Gaussian on the envs rl-zoo tunes TRPO with gSDE for, at rl-zoo's budgets.

    .venv/bin/python benchmarks/sde.py --seeds 0 1 2 3 4                 # every env and variant
    .venv/bin/python benchmarks/sde.py --env Pendulum-v1 --variant sde4

Each run trains the env's preset with the variant's fields set on top (`--preset none` semantics are not used: a
variant changes only what it names), then evaluates deterministically over 10 episodes; results go to
OUT/ENV/VARIANT/seed_S.json (finished runs are skipped) and the table prints mean, std and each seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "sde"
ENVS = {"Pendulum-v1": 100_000, "MountainCarContinuous-v0": 50_000}  # rl-zoo's budgets
VARIANTS: dict[str, dict[str, Any]] = {
    "gaussian": {},  # the preset as it was before gSDE
    "sde4": {"use_sde": True, "sde_sample_freq": 4},  # rl-zoo's TRPO settings for both envs
    "sde4-std-1": {"use_sde": True, "sde_sample_freq": 4, "init_log_std": -1.0},
    "sde4-std-2": {"use_sde": True, "sde_sample_freq": 4, "init_log_std": -2.0},
    "sde8-std-1": {"use_sde": True, "sde_sample_freq": 8, "init_log_std": -1.0},
    "sde-batch-std-1": {"use_sde": True, "sde_sample_freq": -1, "init_log_std": -1.0},
    "sde8": {"use_sde": True, "sde_sample_freq": 8},
    "sde16": {"use_sde": True, "sde_sample_freq": 16},
    "sde-batch": {"use_sde": True, "sde_sample_freq": -1},
}


def run(env_id: str, variant: str, seed: int) -> dict[str, Any]:
    import torch

    from trpo import TRPO

    torch.set_num_threads(1)
    # The variant's fields, and the Gaussian's explicitly (use_sde False), whatever the preset says today.
    overrides = {"use_sde": False, "sde_sample_freq": -1, **VARIANTS[variant]}
    t0 = time.time()
    agent = TRPO(env_id, seed=seed, **overrides)
    agent.learn(ENVS[env_id])
    result = agent.evaluate(10)
    agent.close()
    return {"mean_return": result["mean_return"], "returns": result["returns"], "seconds": time.time() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", choices=list(ENVS), default=list(ENVS))
    parser.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for env_id in args.env:
        for seed in args.seeds:
            for variant in args.variant:
                path = args.out / env_id / variant / f"seed_{seed}.json"
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(run(env_id, variant, seed)))
                    print(env_id, variant, seed, json.loads(path.read_text())["mean_return"], flush=True)
    print("| env | steps | variant | mean | std | seeds |\n|---|---|---|---|---|---|")
    for env_id in args.env:
        for variant in args.variant:
            found = sorted((args.out / env_id / variant).glob("seed_*.json"))
            means = [json.loads(p.read_text())["mean_return"] for p in found]
            if means:
                print(f"| {env_id} | {ENVS[env_id]:,} | {variant} | {statistics.mean(means):.1f} | "
                      f"{statistics.pstdev(means):.1f} | {', '.join(f'{m:.1f}' for m in means)} |")


if __name__ == "__main__":
    main()
