"""Evaluation episodes: full episodes of a policy on an env, optionally rendered to a window or recorded to a video;
the periodic evaluations of a run (their rows, the best so far) and the line each prints during training.

The policy comes in as one call, `act(obs, info, state) -> (action, state)` (the agent's encoding, normalization
and recurrent state behind it), so that this module knows envs and episodes, not networks, and never imports the
agent back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from trpo import render as render_lib
from trpo.envs import EnvError, EnvSpec, check_reward, close_env, env_failure, has_time_limit
from trpo.errors import ConfigError
from trpo.logger import EpisodeProgress, MetricsLog
from trpo.observations import env_reward

# (observation, the info that came with it, the policy's state) -> (the env's action, the next state)
Act = Callable[[Any, dict[str, Any], Any], tuple[Any, Any]]


def check_episodes(episodes: Any) -> int:
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes <= 0:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    return int(episodes)


def evaluate(env: gym.Env, env_spec: EnvSpec, act: Act, initial_state: Any, episodes: int, seed: int,
             max_steps: int, video: str | Path | None = None, render: bool = False,
             progress: bool = False) -> dict[str, Any]:
    """`episodes` full episodes on `env`, or with `video` / `render` on an env made from `env_spec` to render (the
    same episodes: render.py); the result as `run_episodes` gives it, with the video's file and frame count."""
    display = EpisodeProgress(episodes, "frames" if video is not None else "steps") if progress else None
    if video is None and not render:
        return run_episodes(env, act, initial_state, episodes, seed, max_steps, display=display)
    shown = render_lib.render_env(env_spec, "human" if render else "rgb_array")
    writer = None
    try:
        if video is not None:
            writer = render_lib.VideoWriter(video, fps=shown.metadata.get("render_fps") or 30)
        result = run_episodes(shown, act, initial_state, episodes, seed, max_steps, writer, display)
    finally:
        if writer is not None:
            writer.close()
        if shown is not env_spec:  # never the user's own instance
            close_env(shown)
    return {**result, **({} if writer is None else {"video": str(video), "frames": writer.frames})}


def run_episodes(env: gym.Env, act: Act, initial_state: Any, episodes: int, seed: int, max_steps: int,
                 writer: render_lib.VideoWriter | None = None,
                 display: EpisodeProgress | None = None) -> dict[str, Any]:
    """Mean and std of the raw returns over `episodes` episodes, the first reset with `seed`, and the per-episode
    lists. In an env without a time limit of its own, an episode ends after `max_steps` steps (a policy can walk
    into a wall forever): `capped` counts the episodes cut there. What the env raises, or returns that does not
    fit its spaces, is one EnvError naming the call."""
    limit = None if has_time_limit(env) else max_steps
    returns: list[float] = []
    lengths: list[int] = []
    capped = 0
    call = "reset()"
    try:
        obs, info = env.reset(seed=seed)
        if writer is not None:
            writer.add(render_lib.frame(env))
        for _ in range(episodes):
            total, length, done = 0.0, 0, False
            state = initial_state  # each episode starts from the policy's initial state
            while not done:
                action, state = act(obs, info, state)
                call = "step()"
                obs, reward, terminated, truncated, info = env.step(action)
                length += 1
                if writer is not None:
                    writer.add(render_lib.frame(env))
                if display is not None:
                    display.update(len(returns), writer.frames if writer is not None else sum(lengths) + length)
                reward = env_reward(reward)
                check_reward(reward, env, None, length)
                total += reward
                done = bool(terminated or truncated)
                if not done and length == limit:
                    capped += 1
                    done = True
            returns.append(total)
            lengths.append(length)
            call = "reset()"
            if len(returns) < episodes:  # not after the last: a video ends where its last episode does
                obs, info = env.reset()
                if writer is not None:
                    writer.add(render_lib.frame(env))
    except Exception as exc:
        if isinstance(exc, EnvError | ConfigError):
            raise
        raise env_failure(exc, call, env=env) from exc
    finally:
        if display is not None:
            display.close()
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "episodes": episodes, "mean_length": float(np.mean(lengths)), "capped": capped,
            "max_steps": limit, "returns": returns, "lengths": lengths}


def evaluation_line(row: dict[str, Any], best: bool) -> str:
    """A periodic evaluation (a row of evaluations.jsonl) as the training progress shows it."""
    episodes = len(row["returns"])
    capped = f", {row['capped']} cut at eval_max_steps" if row["capped"] else ""
    return (f"eval at step {row['step']}: mean return {row['mean_return']:.2f} +/- {row['std_return']:.2f} over "
            f"{episodes} episode{'s' * (episodes != 1)}{capped}{', new best' if best else ''}")


class Evaluations:
    """A run's periodic evaluations (eval_every): their rows, as evaluations.jsonl holds them (`rows`: those a
    resumed run kept), the best mean return among them, and the log they go to (`out`; None: kept in memory)."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, out: MetricsLog | None = None) -> None:
        self.rows = [] if rows is None else rows
        self.out = out
        means = [row.get("mean_return") for row in self.rows]
        self.best = max([m for m in means if isinstance(m, int | float) and not isinstance(m, bool)], default=-math.inf)

    def add(self, result: dict[str, Any], update: int, step: int, metrics: MetricsLog | None) -> bool:
        """An evaluation's result at (update, step): a row here, in `out`, and in `metrics`' TensorBoard events.
        Returns whether its mean is the best so far."""
        row = {"update": update, "step": step,
               **{k: result[k] for k in ("mean_return", "std_return", "mean_length", "capped", "returns", "lengths")}}
        self.rows.append(row)
        if self.out is not None and metrics is not None:
            self.out.write(row)
            metrics.add_scalars({k: row[k] for k in ("step", "mean_return", "std_return", "mean_length")}, "eval")
        if row["mean_return"] <= self.best:
            return False
        self.best = row["mean_return"]
        return True

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
