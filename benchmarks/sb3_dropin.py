"""sb3-contrib's TRPO and trpo's drop-in (trpo.sb3.TRPO) with identical arguments, side by side in one process.

    .venv/bin/python benchmarks/sb3_dropin.py                           # Hopper-v5 and CartPole-v1, 100k steps each
    .venv/bin/python benchmarks/sb3_dropin.py --env CartPole-v1 --steps 20000

Each library trains the env with rl-baselines3-zoo's TRPO settings (trpo/peers.py: `zoo_settings`, e.g. Hopper's
2 envs x 1024 steps, VecNormalize, 20 critic epochs) on the same `make_vec_env` VecEnv construction, one torch
thread each, seed by seed; the table prints each one's env steps per second over the whole `learn` (collection and
updates), the drop-in's speed as a multiple of sb3-contrib's, and the mean return of the last 10 training episodes
(Monitor's raw returns), then the same VecEnv stepped alone with random actions and its speed as a multiple of
sb3-contrib's: the ceiling of any learner's ratio through that VecEnv. The issue's target: the drop-in at least 3x
sb3-contrib's steps/s on Hopper-v5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

ENVS = ("Hopper-v5", "CartPole-v1")


def make_env(env_id: str, seed: int, vec_env: str) -> tuple[Any, dict[str, Any]]:
    """rl-zoo's VecEnv for `env_id` (its n_envs, VecNormalize where it normalizes) and the remaining settings;
    `vec_env`: rl-zoo's --vec-env choice, the class make_vec_env builds the envs with (dummy: in this process,
    subproc: one process per env)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

    from trpo.peers import zoo_settings

    settings: dict[str, Any] = zoo_settings(env_id)
    n_envs, normalize = settings.pop("n_envs"), settings.pop("normalize")
    vec_env_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[vec_env]
    env: VecEnv = make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)
    if normalize:
        env = VecNormalize(env, gamma=settings["gamma"])
    return env, settings


def train(library: str, env_id: str, steps: int, seed: int, vec_env: str) -> tuple[float, float]:
    """(env steps per second, mean return of the last 10 training episodes) of one run."""
    from sb3_contrib import TRPO as SB3TRPO

    from trpo import sb3 as drop_in

    env, settings = make_env(env_id, seed, vec_env)
    cls = SB3TRPO if library == "sb3-contrib" else drop_in.TRPO
    model = cls("MlpPolicy", env, seed=seed, device="cpu", **settings)
    started = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - started
    returns = [float(e["r"]) for e in list(model.ep_info_buffer)[-10:]]
    env.close()
    return model.num_timesteps / elapsed, statistics.mean(returns) if returns else float("nan")


def vecenv_alone(env_id: str, steps: int, seed: int, vec_env: str) -> float:
    """Env steps per second of the same VecEnv stepped with random actions and nothing else: no learner that
    steps this VecEnv can be faster, so its ratio to sb3-contrib's speed bounds any drop-in's."""
    env, _ = make_env(env_id, seed, vec_env)
    env.action_space.seed(seed)
    actions = [np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(64)]
    env.reset()
    started = time.perf_counter()
    for t in range(steps // env.num_envs):
        env.step(actions[t % 64])
    elapsed = time.perf_counter() - started
    env.close()
    return steps // env.num_envs * env.num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", choices=ENVS, default=list(ENVS))
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--vec-env", choices=("dummy", "subproc"), default="dummy",
                        help="the VecEnv class both libraries get, as rl-zoo's --vec-env (default: rl-zoo's, dummy)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # both libraries on one core (the drop-in sets this itself, as trpo does)
    print(f"{'env':<12} {'seed':>4} {'sb3-contrib steps/s':>20} {'drop-in steps/s':>16} {'ratio':>6} "
          f"{'sb3-contrib return':>19} {'drop-in return':>15} {'VecEnv alone steps/s':>21} {'ceiling':>8}")
    for env_id in args.env:
        for seed in args.seeds:
            sb3_fps, sb3_return = train("sb3-contrib", env_id, args.steps, seed, args.vec_env)
            fps, ret = train("trpo", env_id, args.steps, seed, args.vec_env)
            alone = vecenv_alone(env_id, args.steps, seed, args.vec_env)
            print(f"{env_id:<12} {seed:>4} {sb3_fps:>20.0f} {fps:>16.0f} {fps / sb3_fps:>6.2f} {sb3_return:>19.1f} "
                  f"{ret:>15.1f} {alone:>21.0f} {alone / sb3_fps:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
