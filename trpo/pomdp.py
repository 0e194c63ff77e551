"""Partially observed tasks, for recurrent policies (TRPOConfig.recurrent): Gymnasium envs with their velocities
hidden, and a memory task that only a policy with memory can solve. Registered on import, so that

    trpo train --env trpo.pomdp:CartPoleNoVel-v1 --recurrent lstm

runs them (the `module:EnvId` form imports this module first).

The velocity-hiding tasks are rl-baselines3-zoo's "NoVel" ones: the velocity entries of each observation are set
to 0 (the observation space is unchanged), so a policy sees positions and angles only and must infer velocities
from their history.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Env id -> the observation entries that are velocities.
VELOCITIES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (1, 3),  # x, x_dot, theta, theta_dot
    "Pendulum-v1": (2,),  # cos theta, sin theta, theta_dot
    "MountainCar-v0": (1,),  # position, velocity
    "MountainCarContinuous-v0": (1,),
    "Hopper-v5": tuple(range(5, 11)),  # qpos[1:] (5), then qvel (6)
    "Walker2d-v5": tuple(range(8, 17)),  # qpos[1:] (8), then qvel (9)
    "HalfCheetah-v5": tuple(range(8, 17)),
}


class HideVelocity(gym.ObservationWrapper):
    """Sets the velocity entries of each observation (`VELOCITIES[env id]`, or `indices`) to 0."""

    def __init__(self, env: gym.Env, indices: tuple[int, ...] | None = None) -> None:
        super().__init__(env)
        env_id = env.spec.id if env.spec is not None else None
        if indices is None:
            if env_id not in VELOCITIES:
                raise ValueError(f"HideVelocity knows the velocities of {', '.join(VELOCITIES)}; pass indices= "
                                 f"for {env_id!r}")
            indices = VELOCITIES[env_id]
        shape = env.observation_space.shape
        if shape is None:
            raise ValueError(f"HideVelocity needs an observation space with a shape, got {env.observation_space}")
        self.keep = np.ones(shape, dtype=np.bool_)
        self.keep[list(indices)] = False

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.where(self.keep, observation, 0).astype(observation.dtype, copy=False)


def no_velocity(env_id: str, **kwargs: Any) -> gym.Env:
    """gym.make(env_id) with its velocities hidden (the registered NoVel ids' entry point)."""
    return HideVelocity(gym.make(env_id, **kwargs))


class CueMemory(gym.Env):
    """A memory task. The first observation shows a cue, -1 or +1 (drawn at reset), then `delay` observations show
    nothing, and the last asks for the cue: action 1 for +1, 0 for -1 earns +1, the other -1 (actions before are
    free). Observation [cue, query]: [c, 0] at the start, [0, 0] while waiting, [0, 1] at the question. Episodes
    differ only by their first observation, so a feed-forward policy's expected return is 0 at best and a recurrent
    one's 1."""

    def __init__(self, delay: int = 5) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.delay = delay
        self.t = 0
        self.cue = 1.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.cue = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self.cue, 0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        if self.t <= self.delay:
            query = self.t == self.delay
            return np.array([0.0, float(query)], np.float32), 0.0, False, False, {}
        reward = 1.0 if (int(action) == 1) == (self.cue > 0) else -1.0
        return np.zeros(2, np.float32), reward, True, False, {}


def _register() -> None:
    for env_id in VELOCITIES:
        name, version = env_id.rsplit("-", 1)
        gym.register(f"{name}NoVel-{version}", entry_point=f"{__name__}:no_velocity", kwargs={"env_id": env_id})
    gym.register("CueMemory-v0", entry_point=f"{__name__}:CueMemory", max_episode_steps=1000)


_register()
