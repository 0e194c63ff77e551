"""Peers that `trpo bench --peer NAME` runs beside trpo, each as a run directory `trpo plot` and the bench table read.

    trpo bench --env Swimmer-v5 --peer sb3-contrib                      # the usual way
    python -m trpo.peers sb3-contrib --env Swimmer-v5 --seed 0 --steps 1000000 --run-dir runs/x/sb3-contrib-s0

sb3-contrib: its TRPO with rl-baselines3-zoo's settings (pip install 'trpo[bench]').
rl-zoo: rl-baselines3-zoo's own training script with its own hyperparameter file, as its users run it.
tianshou: Tianshou's TRPO as its MuJoCo example runs it (trpo/peer_tianshou.py).

The run directory gets config.yaml (the settings), metrics.jsonl (one row per update: env steps, episodes that
ended in its batch, their mean return and length), checkpoints every `--checkpoint-every` env steps (model and
VecNormalize statistics; a second call continues from the last one, as `trpo train --resume` does, though not
bit-identically: sb3 does not save its RNG state) and eval.json (deterministic, 10 episodes, observation
statistics frozen, the same keys as trpo's). sb3-contrib averages its Gaussian KL over action dimensions, so its
target_kl 0.01 is max KL 0.01 x action_dim on trpo's joint KL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trpo.checkpoint import open_text, write_text_atomic
from trpo.extras import install_hint
from trpo.peer_tianshou import run_tianshou, tianshou_settings

# rl-baselines3-zoo's hyperparams/trpo.yml (its MuJoCo entries are for v4; `normalize` is VecNormalize with the
# agent's gamma). MuJoCo tasks the zoo does not list (InvertedPendulum, Reacher, ...) get its MuJoCo defaults.
ZOO_MUJOCO: dict[str, Any] = dict(n_envs=2, n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95,
                                  sub_sampling_factor=1, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20,
                                  learning_rate=1e-3, target_kl=0.01, normalize=True)
ZOO: dict[str, dict[str, Any]] = {
    "CartPole": dict(n_envs=2, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99,
                     learning_rate=1e-3, n_critic_updates=20, normalize=False),
    "Pendulum": dict(n_envs=2, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True, sde_sample_freq=4,
                     normalize=False),
    "Acrobot": dict(n_envs=2, n_steps=1024, normalize=True),
    "HalfCheetah": dict(ZOO_MUJOCO, target_kl=0.04),
    "Swimmer": dict(ZOO_MUJOCO, gamma=0.9999),
}
MUJOCO = {"Ant", "Hopper", "Walker2d", "Humanoid", "HumanoidStandup", "InvertedPendulum", "InvertedDoublePendulum",
          "Reacher", "Pusher"}


def zoo_settings(env_id: str) -> dict[str, Any]:
    name = re.sub(r"-v\d+$", "", env_id.rsplit("/", 1)[-1])
    if name in ZOO:
        return dict(ZOO[name])
    if name in MUJOCO:
        return dict(ZOO_MUJOCO)
    raise ValueError(f"no rl-zoo TRPO settings for {env_id}: known {', '.join(sorted({*ZOO, *MUJOCO}))}")


def _step(line: str) -> float:
    """A metrics row's env step; a row cut short by a kill counts as past any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


def _callback(metrics: Path, start_step: int) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    class Log(BaseCallback):
        """One metrics row per rollout, from the Monitor's episode records (episodes ended in that batch)."""

        def _on_rollout_start(self) -> None:
            self.returns: list[float] = []
            self.lengths: list[int] = []
            self.started = time.perf_counter()

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    self.lengths.append(int(info["episode"]["l"]))
            return True

        def _on_rollout_end(self) -> None:
            model = self.model
            assert isinstance(model, OnPolicyAlgorithm)  # TRPO, which rolls out n_steps per env
            steps = model.n_steps * model.n_envs
            row: dict[str, Any] = {"update": self.num_timesteps // steps, "step": self.num_timesteps,
                                   "episodes": len(self.returns),
                                   "fps": steps / max(time.perf_counter() - self.started, 1e-9)}
            if self.returns:
                row["episode_return_mean"] = sum(self.returns) / len(self.returns)
                row["episode_length_mean"] = sum(self.lengths) / len(self.lengths)
            with open_text(metrics) as fh:
                fh.write(json.dumps(row) + "\n")

    return Log()


def run(env_id: str, seed: int, steps: int, run_dir: Path, checkpoint_every: int = 100_000,
        eval_episodes: int = 10, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize

    torch.set_num_threads(1)  # one core per run, as trpo bench's own runs
    settings = zoo_settings(env_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"env": env_id, "seed": seed, "total_steps": steps, "library": "sb3-contrib", "algo": "TRPO",
              "policy": "MlpPolicy", **settings, "env_kwargs": env_kwargs or {}}
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    n_envs, normalize = settings.pop("n_envs"), settings.pop("normalize")
    env: VecEnv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    norm: VecNormalize | None = None  # env itself where `normalize`
    model_file, stats_file = run_dir / "checkpoints" / "model.zip", run_dir / "checkpoints" / "vecnormalize.pkl"
    metrics = run_dir / "metrics.jsonl"
    if model_file.is_file():  # continue: drop rows logged after the checkpoint
        if normalize:
            env = norm = VecNormalize.load(str(stats_file), env)
        model = TRPO.load(str(model_file), env=env, device="cpu")
        write_text_atomic(metrics, "".join(line + "\n" for line in metrics.read_text().splitlines()
                                           if _step(line) <= model.num_timesteps))
    else:
        if normalize:
            env = norm = VecNormalize(env, gamma=settings["gamma"])
        model = TRPO("MlpPolicy", env, seed=seed, device="cpu", **settings)
        write_text_atomic(metrics, "")
    while model.num_timesteps < steps:
        chunk = min(checkpoint_every, steps - model.num_timesteps)
        model.learn(chunk, callback=_callback(metrics, model.num_timesteps), reset_num_timesteps=False)
        model_file.parent.mkdir(exist_ok=True)
        model.save(str(model_file))
        if norm is not None:
            norm.save(str(stats_file))
    eval_env: VecEnv = make_vec_env(env_id, n_envs=1, seed=seed + 1_000_003, env_kwargs=env_kwargs)
    if norm is not None:
        eval_norm = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_norm.obs_rms = norm.obs_rms
        eval_env = eval_norm
    return _evaluate(model, eval_env, eval_episodes, run_dir)


def _evaluate(model: Any, eval_env: Any, episodes: int, run_dir: Path) -> dict[str, Any]:
    """eval.json: `episodes` deterministic episodes, with trpo's keys."""
    from stable_baselines3.common.evaluation import evaluate_policy

    returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True,
                                       return_episode_rewards=True)
    # with return_episode_rewards, lists of each episode's (its annotation also allows the means' floats)
    assert isinstance(returns, list) and isinstance(lengths, list)
    result = {"mean_return": float(sum(returns) / len(returns)),
              "std_return": float(np.std(returns)),
              "episodes": len(returns), "mean_length": float(sum(lengths) / len(lengths)),
              "returns": [float(r) for r in returns], "lengths": [int(n) for n in lengths],
              "step": int(model.num_timesteps)}
    write_text_atomic(run_dir / "eval.json", json.dumps(result))
    return result


def zoo_hyperparams(algo: str) -> dict[str, Any]:
    """rl_zoo3's own hyperparams/ALGO.yml, found without importing rl_zoo3: importing it replaces Gymnasium's
    TimeLimit with its own patch in the whole process (rl_zoo3/gym_patches.py), which vine sampling cannot save."""
    spec = importlib.util.find_spec("rl_zoo3")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the rl-zoo peer needs rl_zoo3: {install_hint('bench')}")
    path = Path(next(iter(spec.submodule_search_locations))) / "hyperparams" / f"{algo}.yml"
    return yaml.safe_load(path.read_text())


def zoo_script_settings(env_id: str) -> dict[str, Any]:
    """rl_zoo3's own hyperparams/trpo.yml entry for `env_id` (its exact id: the script looks it up so)."""
    table = zoo_hyperparams("trpo")
    if env_id not in table:
        known = ", ".join(k for k in table if k != "default" and "Bullet" not in k)
        raise ValueError(f"rl_zoo3's trpo.yml has no entry for {env_id}: it has {known}")
    return dict(table[env_id])


def run_zoo(env_id: str, seed: int, steps: int, run_dir: Path, checkpoint_every: int = 0,
            eval_episodes: int = 10, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """rl_zoo3's own training script (`python -m rl_zoo3.train --algo trpo`, its hyperparameter file, `steps`
    env steps), as users run it, then the same final evaluation as trpo's. A killed run starts again: the script
    keeps no resumable state; a trained one only gets its evaluation."""
    import subprocess
    import sys

    from rl_zoo3.utils import create_test_env, get_saved_hyperparams
    from sb3_contrib import TRPO

    zoo_dir = run_dir / "rl_zoo3"
    model_file = zoo_dir / "trpo" / f"{env_id}_1" / f"{env_id}.zip"
    script = ["rl_zoo3.train", "--algo", "trpo", "--env", env_id, "-n", str(steps), "--seed", str(seed)]
    if env_kwargs:  # the script reads each value as Python (its StoreDict)
        script += ["--env-kwargs", *(f"{key}:{value!r}" for key, value in env_kwargs.items())]
    if not model_file.is_file():
        if zoo_dir.exists():
            import shutil

            shutil.rmtree(zoo_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", *script, "-f", str(zoo_dir), "--eval-freq", "-1", "--save-freq", "-1",
               "--device", "cpu", "--verbose", "0"]
        with open_text(run_dir / "rl_zoo3.log", append=False) as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    stats = model_file.parent / env_id
    config = {"env": env_id, "seed": seed, "total_steps": steps, "library": "rl_zoo3", "algo": "TRPO",
              "command": " ".join(["python", "-m", *script]), **zoo_script_settings(env_id),
              "env_kwargs": env_kwargs or {}}
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    _metrics_from_monitors(model_file.parent, int(config.get("n_envs", 1)) * int(config.get("n_steps", 2048)),
                           run_dir / "metrics.jsonl")
    hyperparams, stats_path = get_saved_hyperparams(str(stats), norm_reward=False, test_mode=True)
    eval_env = create_test_env(env_id, n_envs=1, stats_path=stats_path, seed=seed + 1_000_003,
                               should_render=False, hyperparams=hyperparams, env_kwargs=env_kwargs)
    model = TRPO.load(str(model_file), device="cpu")
    return _evaluate(model, eval_env, eval_episodes, run_dir)


def _metrics_from_monitors(folder: Path, batch: int, out: Path) -> None:
    """metrics.jsonl from the script's Monitor files: episodes in the order they ended, one row per `batch` env
    steps (the episodes that ended in it)."""
    episodes: list[tuple[float, float, int]] = []  # (time, return, length)
    for monitor in sorted(folder.glob("*.monitor.csv")):
        for line in monitor.read_text().splitlines()[2:]:
            r_text, length_text, t_text = line.split(",")[:3]
            episodes.append((float(t_text), float(r_text), int(length_text)))
    episodes.sort()
    rows: list[dict[str, float]] = []
    steps = 0
    pending: list[tuple[float, int]] = []
    for _, r, length in episodes:
        pending.append((r, length))
        steps += length
        if steps >= batch * (len(rows) + 1):
            rows.append({"update": len(rows) + 1, "step": steps, "episodes": len(pending),
                         "episode_return_mean": sum(x for x, _ in pending) / len(pending),
                         "episode_length_mean": sum(n for _, n in pending) / len(pending)})
            pending = []
    write_text_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))


# name -> (its settings for an env id, raising ValueError where it has none; the runner)
PEERS: dict[str, tuple[Callable[[str], dict[str, Any]], Callable[..., dict[str, Any]]]] = {
    "sb3-contrib": (zoo_settings, run),
    "rl-zoo": (zoo_script_settings, run_zoo),
    "tianshou": (tianshou_settings, run_tianshou),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peer", choices=list(PEERS))
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--checkpoint-every", type=int, default=100_000, metavar="STEPS")
    parser.add_argument("--env-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="the env's own options, e.g. '{\"include_cfrc_ext_in_observation\": false}'")
    args = parser.parse_args()
    settings, runner = PEERS[args.peer]
    try:
        settings(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    result = runner(args.env, args.seed, args.steps, args.run_dir, args.checkpoint_every,
                    env_kwargs=args.env_kwargs)
    print(f"{args.run_dir}: {result['mean_return']:.1f}")


if __name__ == "__main__":
    main()
