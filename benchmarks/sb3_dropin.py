"""sb3-contrib's TRPO and trpo's drop-in (trpo.sb3.TRPO) with identical arguments, side by side in one process.

    .venv/bin/python benchmarks/sb3_dropin.py                           # Hopper-v5 and CartPole-v1, 100k steps each
    .venv/bin/python benchmarks/sb3_dropin.py --env CartPole-v1 --steps 20000

Each library trains the env with rl-baselines3-zoo's TRPO settings (trpo/peers.py: `zoo_settings`, e.g. Hopper's
2 envs x 1024 steps, VecNormalize, 20 critic epochs) on the same `make_vec_env` VecEnv construction, one torch
thread each, seed by seed; the table prints each one's env steps per second over the whole `learn` (collection and
updates), the drop-in's speed as a multiple of sb3-contrib's, and the mean return of the last 10 training episodes
(Monitor's raw returns). The issue's target: the drop-in at least 3x sb3-contrib's steps/s on Hopper-v5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

ENVS = ("Hopper-v5", "CartPole-v1")


def train(library: str, env_id: str, steps: int, seed: int) -> tuple[float, float]:
    """(env steps per second, mean return of the last 10 training episodes) of one run."""
    from sb3_contrib import TRPO as SB3TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize

    from trpo import sb3 as drop_in
    from trpo.peers import zoo_settings

    settings: dict[str, Any] = zoo_settings(env_id)
    n_envs, normalize = settings.pop("n_envs"), settings.pop("normalize")
    env: VecEnv = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=settings["gamma"])
    cls = SB3TRPO if library == "sb3-contrib" else drop_in.TRPO
    model = cls("MlpPolicy", env, seed=seed, device="cpu", **settings)
    started = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - started
    returns = [float(e["r"]) for e in list(model.ep_info_buffer)[-10:]]
    env.close()
    return model.num_timesteps / elapsed, statistics.mean(returns) if returns else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", choices=ENVS, default=list(ENVS))
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # both libraries on one core (the drop-in sets this itself, as trpo does)
    print(f"{'env':<12} {'seed':>4} {'sb3-contrib steps/s':>20} {'drop-in steps/s':>16} {'ratio':>6} "
          f"{'sb3-contrib return':>19} {'drop-in return':>15}")
    for env_id in args.env:
        for seed in args.seeds:
            sb3_fps, sb3_return = train("sb3-contrib", env_id, args.steps, seed)
            fps, ret = train("trpo", env_id, args.steps, seed)
            print(f"{env_id:<12} {seed:>4} {sb3_fps:>20.0f} {fps:>16.0f} {fps / sb3_fps:>6.2f} {sb3_return:>19.1f} "
                  f"{ret:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
