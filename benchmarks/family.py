"""The family compared on one machinery: every update rule on the same envs, presets, seeds and budgets.

    .venv/bin/python benchmarks/family.py --env CartPole-v1 Pendulum-v1 --steps 100000 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/family.py --env Hopper-v5 --steps 300000 --seeds 0 1 2 3 4 --plot docs/family_hopper.png

Variants: trpo, npg, pg, penalty (adaptive beta), penalty:theory (the theorem's C on the max KL), ppo,
trpo:max (the line search bounds the max KL over states), and sb3-ppo (stable-baselines3's PPO on the same
envs, batch and PPO settings, as a check of ours; `pip install -e ".[bench]"`). Each run is one process on one
core (envs stepped in it: the same runs as the presets' worker processes give)
(`--jobs` at a time) and writes its result to OUT/ENV/VARIANT/seedS.json; a run whose file exists is skipped,
so an interrupted benchmark continues where it stopped. Prints per env and variant the final deterministic
evaluation over 10 episodes (mean, IQM, min, max across seeds), the seconds per update and per policy step,
how often the max-state KL exceeded delta, and the KL of the steps; `--plot` draws the learning curves.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "trpo": {"update_rule": "trpo"},
    "npg": {"update_rule": "npg"},
    "pg": {"update_rule": "pg"},
    "penalty": {"update_rule": "penalty"},
    "penalty:theory": {"update_rule": "penalty", "kl_penalty": "theory"},
    "ppo": {"update_rule": "ppo"},
    "trpo:max": {"update_rule": "trpo", "kl_constraint": "max"},
}
CURVE_KEYS = ("step", "episode_return_mean", "kl", "kl_max", "time_rollout", "time_policy", "time_value",
              "step_accepted", "penalty_beta")


def run_trpo(env_id: str, variant: str, seed: int, steps: int) -> dict[str, Any]:
    import torch

    from trpo import TRPO

    torch.set_num_threads(1)
    # Envs in this process: runs are bit-identical to the presets' worker processes (tested), and `--jobs` runs
    # then use one core each.
    agent = TRPO(env_id, seed=seed, vector_mode="sync", **VARIANTS[variant])
    start = time.perf_counter()
    agent.learn(steps)
    seconds = time.perf_counter() - start
    result = agent.evaluate(10)
    curve = [{k: row.get(k) for k in CURVE_KEYS} for row in agent.history]
    max_kl = agent.config.max_kl
    agent.close()
    return {"eval": result["mean_return"], "train_seconds": seconds, "max_kl": max_kl, "curve": curve}


def run_sb3_ppo(env_id: str, seed: int, steps: int) -> dict[str, Any]:
    """stable-baselines3's PPO with our preset's envs, batch, gamma, lambda, normalization and network sizes and
    PPO's defaults as our ppo rule takes them (3e-4, 10 epochs of 64, clip 0.2, max gradient norm 0.5)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    from trpo.resolve import resolve_config

    torch.set_num_threads(1)
    cfg, _ = resolve_config(env_id)
    env = make_vec_env(env_id, n_envs=cfg.num_envs, seed=seed)
    if cfg.normalize_obs or cfg.normalize_reward:
        env = VecNormalize(env, norm_obs=cfg.normalize_obs, norm_reward=cfg.normalize_reward, gamma=cfg.gamma)
    model = PPO("MlpPolicy", env, n_steps=cfg.steps_per_env, batch_size=64, n_epochs=10, learning_rate=3e-4,
                gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=0.2, max_grad_norm=0.5, seed=seed,
                policy_kwargs=dict(net_arch=dict(pi=list(cfg.actor_hidden), vf=list(cfg.critic_hidden)),
                                   activation_fn=torch.nn.Tanh), device="cpu")
    curve: list[dict[str, Any]] = []

    class Curve(BaseCallback):
        def _on_rollout_end(self) -> None:
            infos = [ep["r"] for ep in self.model.ep_info_buffer]
            curve.append({"step": self.num_timesteps, "episode_return_mean": float(np.mean(infos)) if infos else None})

        def _on_step(self) -> bool:
            return True

    start = time.perf_counter()
    model.learn(steps, callback=Curve())
    seconds = time.perf_counter() - start
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1_000_003)
    if isinstance(env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, norm_obs=cfg.normalize_obs)
        eval_env.obs_rms = env.obs_rms
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True, return_episode_rewards=True)
    return {"eval": float(np.mean(returns)), "train_seconds": seconds, "max_kl": None, "curve": curve}


def run_one(job: tuple[str, str, int, int, str]) -> str:
    env_id, variant, seed, steps, out = job
    path = Path(out) / env_id / variant / f"seed{seed}.json"
    if path.exists():
        return f"skip {path}"
    result = run_sb3_ppo(env_id, seed, steps) if variant == "sb3-ppo" else run_trpo(env_id, variant, seed, steps)
    result.update(env=env_id, variant=variant, seed=seed, steps=steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)  # a killed run leaves no result, so it runs again next time
    return f"{env_id} {variant} seed {seed}: eval {result['eval']:.1f} in {result['train_seconds']:.0f} s"


def iqm(values: list[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (all values when there are fewer than 4)."""
    xs = np.sort(np.asarray(values))
    k = len(xs) // 4
    return float(xs[k : len(xs) - k].mean()) if len(xs) >= 4 else float(xs.mean())


def summarize(results: list[dict[str, Any]]) -> None:
    print("| env | variant | seeds | final eval per seed | mean | IQM | min | max | s / update | s / policy step | "
          "max-state KL > delta | mean KL / delta | max-state KL / delta |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env_id in dict.fromkeys(r["env"] for r in results):
        for variant in dict.fromkeys(r["variant"] for r in results if r["env"] == env_id):
            runs = sorted((r for r in results if r["env"] == env_id and r["variant"] == variant),
                          key=lambda r: r["seed"])
            evals = [r["eval"] for r in runs]
            rows = [row for r in runs for row in r["curve"]]
            per_update = np.mean([r["train_seconds"] / len(r["curve"]) for r in runs])
            policy = f"{np.mean([row['time_policy'] for row in rows]):.3f}" if "time_policy" in rows[0] else "-"
            delta = runs[0]["max_kl"]
            if delta and "kl_max" in rows[0]:
                over = f"{np.mean([row['kl_max'] > delta for row in rows]):.0%}"
                mean_kl = f"{np.mean([row['kl'] for row in rows]) / delta:.3g}"
                max_kl = f"{np.mean([row['kl_max'] for row in rows]) / delta:.3g}"
            else:
                over = mean_kl = max_kl = "-"
            print(f"| {env_id} | {variant} | {len(runs)} | {', '.join(f'{e:.1f}' for e in evals)} | "
                  f"{np.mean(evals):.1f} | {iqm(evals):.1f} | {min(evals):.1f} | {max(evals):.1f} | "
                  f"{per_update:.3f} | {policy} | {over} | {mean_kl} | {max_kl} |")


def plot(results: list[dict[str, Any]], path: str) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # grid points before a variant's first episode
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in results))
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env_id in zip(axes[0], envs, strict=True):
        for variant in dict.fromkeys(r["variant"] for r in results if r["env"] == env_id):
            runs = [r for r in results if r["env"] == env_id and r["variant"] == variant]
            grid = np.linspace(0, max(r["steps"] for r in runs), 50)
            curves = []
            for r in runs:
                pts = [(row["step"], row["episode_return_mean"]) for row in r["curve"]
                       if row.get("episode_return_mean") is not None]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    curves.append(np.interp(grid, xs, ys, left=np.nan))
            if not curves:
                continue
            stack = np.array(curves)
            mean = np.nanmean(stack, axis=0)
            ax.plot(grid, mean, label=f"{variant} ({len(curves)} seeds; band: min-max)")
            ax.fill_between(grid, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0), alpha=0.15)
        ax.set_title(env_id)
        ax.set_xlabel("env steps")
        ax.set_ylabel("training episode return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"curves: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "sb3-ppo"], choices=[*VARIANTS, "sb3-ppo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/family", help="one JSON per run; existing ones are skipped")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw the learning curves into this file")
    args = parser.parse_args()

    jobs = [(env, variant, seed, args.steps, args.out) for env in args.env for variant in args.variants
            for seed in args.seeds]
    print(f"# trpo family benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {len(jobs)} runs, {args.jobs} at a time")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(run_one, jobs):
            print(line, flush=True)
    results = [json.loads((Path(args.out) / env / variant / f"seed{seed}.json").read_text())
               for env, variant, seed, _, _ in jobs]
    results = [r for r in results if r["steps"] == args.steps]
    summarize(results)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
