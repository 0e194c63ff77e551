"""Environments and rollouts: N vectorized Gymnasium envs stepped by the current policy into a typed batch.

`terminated` and `truncated` are kept apart. At every step where an episode ends, the batch stores the *true*
final observation as `next_obs` (Gymnasium's SAME_STEP autoreset hands it over in info['final_obs']), so a
time-limit truncation can bootstrap from V(final obs) while a termination does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv
from torch import Tensor

from trpo.networks import Actor
from trpo.normalization import ObsNormalizer, RewardScaler
from trpo.spaces import ActionDistribution, ObsEncoder

EnvSpec = str | Callable[[], gym.Env] | gym.Env


class EnvError(ValueError):
    """The environment cannot be made or returned invalid data; the message says which."""


def make_env(spec: EnvSpec) -> gym.Env:
    """One env from an id (also 'module:EnvId'), a factory, or an existing instance."""
    if isinstance(spec, gym.Env):
        return spec
    if callable(spec):
        env = spec()
        if not isinstance(env, gym.Env):
            raise EnvError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
        return env
    try:
        return gym.make(spec)
    except gym.error.Error as exc:
        raise EnvError(f"unknown environment id {spec!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise EnvError(f"cannot make environment {spec!r}: {exc}") from exc


def env_id_of(spec: EnvSpec) -> str | None:
    """The id to store in configs and checkpoints, when there is one."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, gym.Env) and spec.spec is not None:
        return spec.spec.id
    return None


class SyncEnvs:
    """N envs stepped in turn in this process, with Gymnasium's SAME_STEP autoreset semantics: when an episode
    ends, the returned observation is the reset one and info['final_obs'][i] holds the true final observation.
    A lean stand-in for gymnasium's SyncVectorEnv, which spends several times an env step per step on generic
    space handling and copies."""

    def __init__(self, envs: list[gym.Env]) -> None:
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space

    def _stack(self, obs: list[Any]) -> Any:
        if isinstance(self.single_observation_space, gym.spaces.Dict):
            return {key: np.stack([o[key] for o in obs]) for key in self.single_observation_space.spaces}
        return np.stack(obs)

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        obs = [env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(self.envs)]
        return self._stack(obs), {}

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        obs: list[Any] = [None] * n
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final_obs = np.empty(n, dtype=object)
        for i, env in enumerate(self.envs):
            obs[i], rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                final_obs[i] = obs[i]
                obs[i], _ = env.reset()
        return self._stack(obs), rewards, terminated, truncated, {"final_obs": final_obs}

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(spec: EnvSpec, num_envs: int, mode: str) -> SyncEnvs | VectorEnv:
    """N envs with SAME_STEP autoreset. An instance can only serve a single synchronous env."""
    if isinstance(spec, gym.Env):
        if num_envs != 1 or mode != "sync":
            raise EnvError("an env instance serves only num_envs=1, vector_mode='sync'; pass an id or a factory")
        fns = [lambda: spec]
    else:
        make_env(spec).close()  # fail early, in this process, with a clear message
        fns = [lambda: make_env(spec) for _ in range(num_envs)]
    if mode == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncEnvs([fn() for fn in fns])


@dataclass
class Batch:
    """T steps x N envs, time-major. Observations are encoded and normalized as the policy saw them."""

    obs: Tensor  # [T, N, D]
    next_obs: Tensor  # [T, N, D]: s_{t+1}, the true final observation where the episode ended
    actions: Tensor  # [T, N, ...]
    log_probs: Tensor  # [T, N]: log pi_old(a_t | s_t)
    rewards: Tensor  # [T, N]: after reward scaling
    terminated: Tensor  # [T, N] bool
    truncated: Tensor  # [T, N] bool
    episode_returns: list[float] = field(default_factory=list)  # raw returns of episodes ending in the batch
    episode_lengths: list[int] = field(default_factory=list)


class RolloutCollector:
    """Steps a vector env with the actor; keeps the current observation and episode counters across batches."""

    def __init__(
        self,
        envs: SyncEnvs | VectorEnv,
        encoder: ObsEncoder,
        dist: ActionDistribution,
        obs_norm: ObsNormalizer,
        reward_scaler: RewardScaler,
        device: torch.device,
        seed: int,
    ) -> None:
        self.envs = envs
        self.encoder = encoder
        self.dist = dist
        self.obs_norm = obs_norm
        self.reward_scaler = reward_scaler
        self.device = device
        self.num_envs = envs.num_envs
        raw, _ = envs.reset(seed=seed)
        self.obs = self._observe(raw, update=True)
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)

    def _observe(self, raw: Any, update: bool) -> np.ndarray:
        encoded = self.encoder(raw)
        if not np.isfinite(encoded).all():
            bad = int(np.argwhere(~np.isfinite(encoded))[0][0])
            raise EnvError(f"environment returned a non-finite observation (NaN or inf) in env {bad}")
        return self.obs_norm(encoded, update=update)

    @torch.no_grad()
    def collect(self, actor: Actor, steps: int, generator: torch.Generator) -> Batch:
        """`steps` steps of every env with pi_old = the actor as it is now. Actions are sampled on the CPU from a
        numpy copy of the actor and noise drawn from `generator` for the whole batch at once; log pi_old(a|s)
        is computed afterwards in one batched pass."""
        n, d = self.num_envs, self.encoder.dim
        policy = actor.numpy_policy()
        noise = self.dist.noise((steps, n, self.dist.head_dim), generator)
        obs_buf = np.zeros((steps, n, d), dtype=np.float32)
        next_buf = np.zeros((steps, n, d), dtype=np.float32)
        rew_buf = np.zeros((steps, n), dtype=np.float32)
        term_buf = np.zeros((steps, n), dtype=bool)
        trunc_buf = np.zeros((steps, n), dtype=bool)
        actions: list[Tensor] = []
        ep_returns: list[float] = []
        ep_lengths: list[int] = []
        for t in range(steps):
            obs_buf[t] = self.obs
            action = self.dist.sample_with_noise(policy(self.obs), noise[t])
            actions.append(action)
            raw, reward, terminated, truncated, info = self.envs.step(self.dist.to_env(action))
            reward = np.asarray(reward, dtype=np.float64)
            if not np.isfinite(reward).all():
                bad = int(np.argwhere(~np.isfinite(reward))[0][0])
                raise EnvError(f"environment returned a non-finite reward (NaN or inf) in env {bad}")
            done = np.logical_or(terminated, truncated)
            self.obs = self._observe(raw, update=True)
            next_buf[t] = self.obs
            if done.any():
                final = info["final_obs"]
                for i in np.flatnonzero(done):
                    encoded = self.encoder.one(final[i])[None]
                    if not np.isfinite(encoded).all():
                        raise EnvError(f"environment returned a non-finite final observation in env {i}")
                    next_buf[t, i] = self.obs_norm(encoded, update=False)[0]
            self.ep_return += reward
            self.ep_length += 1
            for i in np.flatnonzero(done):
                ep_returns.append(float(self.ep_return[i]))
                ep_lengths.append(int(self.ep_length[i]))
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
            rew_buf[t] = self.reward_scaler(reward, done)
            term_buf[t], trunc_buf[t] = terminated, truncated
        as_t = lambda a: torch.as_tensor(a, device=self.device)  # noqa: E731
        obs = as_t(obs_buf)
        all_actions = torch.stack(actions).to(self.device)
        flat_params = actor(obs.reshape(steps * n, d))
        log_probs = self.dist.log_prob(flat_params, all_actions.reshape(steps * n, *all_actions.shape[2:]))
        return Batch(
            obs=obs,
            next_obs=as_t(next_buf),
            actions=all_actions,
            log_probs=log_probs.reshape(steps, n),
            rewards=as_t(rew_buf),
            terminated=as_t(term_buf),
            truncated=as_t(trunc_buf),
            episode_returns=ep_returns,
            episode_lengths=ep_lengths,
        )

    def close(self) -> None:
        self.envs.close()
