"""Action masking where it matters: Taxi-v4 (Gymnasium's info["action_mask"]: moves into walls and illegal
pick-ups/drop-offs masked) trained with the mask and with it stripped from the info, same seeds and budget.

    .venv/bin/python benchmarks/masking.py                       # 5 seeds x 100k steps x {masked, unmasked}
    .venv/bin/python benchmarks/masking.py --seeds 0 1 --steps 50000 --json runs/masking.json

Prints, per variant and seed, the final deterministic evaluation (10 episodes) and the training return of the
last update; then the mean per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import gymnasium as gym
import numpy as np

from trpo import TRPO, TRPOConfig

CONFIG = TRPOConfig(num_envs=8, steps_per_env=256, max_kl=0.02, value_epochs=10)


class StripMask(gym.Wrapper):
    """The same env without info["action_mask"]: the policy may choose any action."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, {k: v for k, v in info.items() if k != "action_mask"}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), terminated, truncated, {k: v for k, v in info.items() if k != "action_mask"}


def masked_taxi() -> gym.Env:
    return gym.make("Taxi-v4")


def unmasked_taxi() -> gym.Env:
    return StripMask(gym.make("Taxi-v4"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Taxi-v4 with and without action masking")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for name, env in (("masked", masked_taxi), ("unmasked", unmasked_taxi)):
        for seed in args.seeds:
            t0 = time.perf_counter()
            agent = TRPO(env, CONFIG, seed=seed)
            agent.learn(args.steps)
            ev = agent.evaluate(10)
            agent.close()
            row = dict(seed=seed, eval=ev["mean_return"], train_last=agent.history[-1]["episode_return_mean"],
                       seconds=time.perf_counter() - t0)
            results.setdefault(name, []).append(row)
            print(f"{name:<9} seed {seed}: evaluation {row['eval']:8.1f}, last training return "
                  f"{row['train_last']:8.1f} ({row['seconds']:.0f} s)", flush=True)
    for name, rows in results.items():
        print(f"{name}: mean evaluation {np.mean([r['eval'] for r in rows]):.1f} over {len(rows)} seeds")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(steps=args.steps, config=CONFIG.to_dict(), results=results), fh, indent=1)


if __name__ == "__main__":
    main()
