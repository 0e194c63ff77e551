"""Recurrent TRPO on partially observed tasks, against feed-forward TRPO, feed-forward TRPO on stacked frames, and
sb3-contrib's RecurrentPPO with rl-baselines3-zoo's settings (hyperparams/ppo_lstm.yml), at the same budget.

    pip install -e ".[bench]"
    .venv/bin/python benchmarks/recurrent.py --task CartPoleNoVel-v1 --seeds 0 1 2 3 4     # run (resumable)
    .venv/bin/python benchmarks/recurrent.py --shard 1/3                                    # a third of all runs
    .venv/bin/python benchmarks/recurrent.py --table                                        # the results so far

Every run is a fresh subprocess and ends with the final deterministic evaluation over 10 episodes (observation
statistics frozen), written to OUT/TASK/METHOD/seed_S.json; finished runs are skipped, and a trpo run killed half
way goes on from its latest checkpoint (its run directory is under runs/bench-recurrent). The tasks come from
trpo.pomdp (velocities hidden as rl-zoo hides them, and CueMemory-v0); trpo's runs take the preset of the fully
observed env with `recurrent` set (methods below).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "recurrent"  # one small JSON per run
RUNS = ROOT / "runs" / "bench-recurrent"  # trpo's run directories (checkpoints: resumable), not kept in git

# task -> (env id, env steps, the fully observed env (its preset), the entry of rl-zoo's hyperparams/ppo_lstm.yml
# that RecurrentPPO runs with, read from the installed rl_zoo3 so that nothing is copied by hand)
TASKS: dict[str, tuple[str, int, str | None, str]] = {
    "CartPoleNoVel-v1": ("trpo.pomdp:CartPoleNoVel-v1", 100_000, "CartPole-v1", "CartPoleNoVel-v1"),
    "PendulumNoVel-v1": ("trpo.pomdp:PendulumNoVel-v1", 100_000, "Pendulum-v1", "PendulumNoVel-v1"),
    "MountainCarContinuousNoVel-v0": ("trpo.pomdp:MountainCarContinuousNoVel-v0", 300_000, "MountainCarContinuous-v0",
                                      "MountainCarContinuousNoVel-v0"),
    "HopperNoVel-v5": ("trpo.pomdp:HopperNoVel-v5", 1_000_000, "Hopper-v5", "Hopper-v4"),
    "CueMemory-v0": ("trpo.pomdp:CueMemory-v0", 50_000, None, "CartPoleNoVel-v1"),  # no entry: CartPoleNoVel's
}


def zoo_lstm_settings(entry: str) -> dict[str, Any]:
    """rl-zoo's ppo_lstm.yml entry as RecurrentPPO keyword arguments, plus n_envs and normalize (its policy_kwargs
    string evaluated as rl-zoo evaluates it, with torch.nn as nn). rl_zoo3 is not imported (trpo.peers says why)."""
    from torch import nn

    from trpo.peers import zoo_hyperparams

    settings = dict(zoo_hyperparams("ppo_lstm")[entry])
    for key in ("n_timesteps", "policy"):
        settings.pop(key, None)
    if isinstance(settings.get("policy_kwargs"), str):
        settings["policy_kwargs"] = eval(settings["policy_kwargs"], {"nn": nn, "dict": dict})  # rl-zoo does the same
    settings.setdefault("n_envs", 1)
    settings["normalize"] = bool(settings.get("normalize", False))
    return settings


# method -> trpo overrides (None: RecurrentPPO)
METHODS: dict[str, dict[str, Any] | None] = {
    "trpo-lstm": {"recurrent": "lstm"},
    "trpo-lstm-norm": {"recurrent": "lstm", "normalize_obs": True, "normalize_reward": True},
    "trpo-mlp": {},
    "trpo-stack4": {"frame_stack": 4},
    "rppo": None,
}
EPISODES = 10


def run_trpo(task: str, method: str, seed: int, run_dir: Path) -> dict[str, Any]:
    import gymnasium as gym

    import trpo.pomdp  # noqa: F401  (registers the tasks)
    from trpo import TRPO
    from trpo.resolve import preset_name_for, resolve_config

    env_id, steps, preset, _ = TASKS[task]
    overrides = dict(METHODS[method] or {})
    stack = overrides.pop("frame_stack", 0)
    env: Any = env_id
    if stack:
        env = lambda: gym.wrappers.FlattenObservation(  # noqa: E731
            gym.wrappers.FrameStackObservation(gym.make(env_id), stack))
    t0 = time.time()
    if (run_dir / "config.yaml").is_file():  # killed half way: on from its latest checkpoint
        agent = TRPO.resume(run_dir, env=env if stack else None)
    else:
        preset_name = preset_name_for(preset) if preset else None
        config, _ = resolve_config(env_id, preset_name or "none", overrides={"eval_episodes": EPISODES, **overrides})
        agent = TRPO(env, config=config, seed=seed, run_dir=run_dir)
    agent.train_until(steps)  # a total: a resumed run goes on to it
    result = agent.evaluate(EPISODES)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    agent.close()
    per_update = statistics.mean(r["time_rollout"] + r["time_policy"] + r["time_value"] for r in rows)
    policy = statistics.mean(r["time_policy"] for r in rows)
    return {"mean_return": result["mean_return"], "returns": result["returns"], "steps": steps,
            "seconds": time.time() - t0, "s_per_update": per_update, "s_policy_step": policy,
            "batch": rows[-1]["step"] // len(rows)}


def run_rppo(task: str, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import LinearSchedule
    from stable_baselines3.common.vec_env import VecNormalize

    import trpo.pomdp  # noqa: F401

    env_id, steps, _, entry = TASKS[task]
    settings = zoo_lstm_settings(entry)
    n_envs, normalize = settings.pop("n_envs"), settings.pop("normalize")
    for key in ("learning_rate", "clip_range"):
        if isinstance(settings.get(key), str):  # rl-zoo's "lin_X": X decayed linearly to 0
            settings[key] = LinearSchedule(float(settings[key][4:]), 0.0, 1.0)
    kwargs = dict(settings.pop("policy_kwargs", {}))
    venv = make_vec_env(env_id.split(":")[-1], n_envs=n_envs, seed=seed)  # registered by trpo.pomdp
    if normalize:
        venv = VecNormalize(venv, gamma=settings.get("gamma", 0.99))
    t0 = time.time()
    model = RecurrentPPO("MlpLstmPolicy", venv, seed=seed, policy_kwargs=kwargs, device="cpu", **settings)
    model.learn(steps)
    seconds = time.time() - t0
    env = gym.make(env_id.split(":")[-1])
    returns = []
    obs_rms = venv.obs_rms if normalize else None
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=seed + 1_000_003 + episode)
        state, start, total, done = None, np.ones(1, bool), 0.0, False
        while not done:
            x = obs if obs_rms is None else np.clip((obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10)
            action, state = model.predict(x[None].astype(np.float32), state=state, episode_start=start,
                                          deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action[0])
            total += float(reward)
            start = np.zeros(1, bool)
            done = terminated or truncated
        returns.append(total)
    return {"mean_return": float(np.mean(returns)), "returns": returns, "steps": steps, "seconds": seconds}


def one(task: str, method: str, seed: int, out: Path) -> None:
    """Run one (task, method, seed) here and write its result.json."""
    import torch

    torch.set_num_threads(1)
    result = (run_rppo(task, seed) if METHODS[method] is None
              else run_trpo(task, method, seed, RUNS / task / method / f"seed_{seed}"))
    path = out / task / method / f"seed_{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "method": method, "seed": seed, **result}))


def table(out: Path) -> str:
    lines = ["| task | steps | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for task, (_, steps, _, _) in TASKS.items():
        cells = []
        for method in METHODS:
            found = [json.loads(p.read_text()) for p in sorted((out / task / method).glob("seed_*.json"))]
            means = [r["mean_return"] for r in found]
            cells.append("" if not means else f"{statistics.mean(means):.1f} ± "
                         f"{statistics.pstdev(means):.1f} ({len(means)})")
        lines.append(f"| {task} | {steps:,} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per update (rollout + policy step + value fit; policy step alone in brackets), trpo's runs:",
              "", "| task | batch | " + " | ".join(m for m in METHODS if METHODS[m] is not None) + " |",
              "|---|---|" + "---|" * sum(METHODS[m] is not None for m in METHODS)]
    for task in TASKS:
        cells, batch = [], ""
        for method in (m for m in METHODS if METHODS[m] is not None):
            found = [json.loads(p.read_text()) for p in sorted((out / task / method).glob("seed_*.json"))]
            if found:
                batch = f"{found[0]['batch']:,}"
                cells.append(f"{statistics.mean(r['s_per_update'] for r in found):.3f} "
                             f"({statistics.mean(r['s_policy_step'] for r in found):.3f})")
            else:
                cells.append("")
        if batch:
            lines.append(f"| {task} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--method", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shard", default="1/1", help="i/n: run every n-th of the pending runs, from the i-th")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of finished runs and stop")
    parser.add_argument("--one", nargs=3, metavar=("TASK", "METHOD", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], args.one[1], int(args.one[2]), args.out)
        return
    if args.table:
        print(table(args.out))
        return
    index, count = (int(x) for x in args.shard.split("/"))
    runs = [(t, m, s) for t in args.task for s in args.seeds for m in args.method
            if not (args.out / t / m / f"seed_{s}.json").is_file()]
    for task, method, seed in runs[index - 1 :: count]:
        print(f"{task} {method} seed {seed} ...", flush=True)
        code = subprocess.run([sys.executable, __file__, "--one", task, method, str(seed), "--out",
                               str(args.out)]).returncode
        if code:
            print(f"  failed with exit code {code}", flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
