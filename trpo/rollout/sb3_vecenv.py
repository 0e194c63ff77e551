"""The rollout backend over a Stable-Baselines3 `VecEnv` (DummyVecEnv, SubprocVecEnv, VecNormalize, VecFrameStack...),
stepped as given: its own wrappers (a VecNormalize's statistics included) apply, trpo's normalizers stay off.

A VecEnv resets an ended episode inside `step` and hands the true final observation over in
info["terminal_observation"], with info["TimeLimit.truncated"] where a time limit cut the episode: the segment
stores that final observation as `next_obs` and keeps terminated and truncated apart, so a truncation bootstraps
from V(final obs) as trpo's own runner does. The drop-in (trpo/sb3.py) passes the VecEnv as a `VecEnvSource`,
which `collector.BACKENDS` maps here, and sets the runner's hooks to call SB3 callbacks per env step.
Nothing here imports Stable-Baselines3: the VecEnv is used through its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution
from trpo.envs import EnvError, EnvSpec
from trpo.observations import ObsEncoder
from trpo.policy import Acting
from trpo.rollout.runner import BatchNoise, InProcess, Segment
from trpo.vine import VinePlan

# (actions as the env took them, new observations, rewards, dones, infos) -> False to stop the rollout
StepHook = Callable[[np.ndarray, Any, np.ndarray, np.ndarray, list[dict[str, Any]]], bool]


class RolloutStoppedError(Exception):
    """A step hook asked to stop (an SB3 callback's on_step returned False): the batch is abandoned, as SB3 does."""


class VecEnvSource:
    """An SB3 VecEnv as trpo's env spec. `seed`: seed the VecEnv's envs at the first reset (SB3's `env.seed`);
    False leaves them unseeded, as SB3 does without a seed. Calling it (as a factory) is refused: a VecEnv is
    stepped whole, by this module's backend."""

    def __init__(self, venv: Any, seed: bool = True) -> None:
        self.venv, self.seed = venv, seed

    def __call__(self) -> gym.Env:
        raise EnvError("an SB3 VecEnv is stepped whole by the sb3_vecenv backend, not made env by env")


class VecEnvRunner(InProcess):
    """Steps one VecEnv for a whole segment with a frozen policy. Hooks (None: none): `on_rollout_start()` before
    a segment's first step, `on_step(...)` after each step (False stops: RolloutStoppedError), `on_rollout_end()`
    after its last step."""

    restarts = 0

    def __init__(self, source: VecEnvSource, encoder: ObsEncoder, dist: ActionDistribution) -> None:
        self.source, self.venv, self.encoder, self.dist = source, source.venv, encoder, dist
        k = self.venv.num_envs
        self.obs = np.zeros((k, encoder.dim), dtype=encoder.dtype)
        self.ep_return = np.zeros(k)
        self.ep_length = np.zeros(k, dtype=np.int64)
        self.starts = np.ones(k, bool)
        self.state: Any = None
        self.pending: tuple[Any, ...] | None = None
        self.on_rollout_start: Callable[[], None] | None = None
        self.on_step: StepHook | None = None
        self.on_rollout_end: Callable[[], None] | None = None

    def reset(self, seed: int) -> np.ndarray:
        if self.source.seed:
            self.venv.seed(seed % 2**32)
        self.obs[:] = self._encoded(self.venv.reset(), "observation")
        return self._all_restarted()

    def _encoded(self, raw: Any, what: str) -> np.ndarray:
        obs = self.encoder(raw)
        if not np.isfinite(obs).all():
            raise EnvError(f"the VecEnv returned a non-finite {what} (NaN or inf)")
        return obs

    def run(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> Segment:
        if plan is not None:
            raise EnvError("vine sampling restores single envs' states: a VecEnv cannot")
        steps, k = noise.shape[0], self.venv.num_envs
        if self.state is None:
            self.state = acting.initial_state(k)
        seg = Segment.empty(steps, k, self.encoder, self.state)
        actions = []
        if self.on_rollout_start is not None:
            self.on_rollout_start()
        for t in range(steps):
            seg.record(t, self.obs, self.starts, self.state)
            action, self.state = acting.act(self.obs, self.state, self.starts, noise[t])
            actions.append(action)
            env_actions = self.dist.to_env(action)
            new_obs, rewards, dones, infos = self.venv.step(env_actions)
            encoded = self._encoded(new_obs, "observation")
            seg.next_obs[t] = encoded
            seg.rewards[t] = rewards
            self.ep_return += rewards
            self.ep_length += 1
            for i in np.flatnonzero(dones):
                info = infos[i]
                final = info.get("terminal_observation")
                cut = final is not None and bool(info.get("TimeLimit.truncated", False))
                seg.truncated[t, i], seg.terminated[t, i] = cut, not cut
                if final is not None:
                    seg.next_obs[t, i] = self._encoded(_batch_of_one(final), "final observation")[0]
                episode = info.get("episode")  # a Monitor's record: the raw return, before any VecNormalize
                seg.episode_returns.append(float(episode["r"]) if episode else float(self.ep_return[i]))
                seg.episode_lengths.append(int(episode["l"]) if episode else int(self.ep_length[i]))
                self.ep_return[i], self.ep_length[i] = 0.0, 0
            self.obs[:] = encoded
            self.starts[:] = dones
            if self.on_step is not None and not self.on_step(env_actions, new_obs, rewards, dones, infos):
                self.pending = None
                raise RolloutStoppedError
        seg.actions = np.stack(actions)
        if self.on_rollout_end is not None:
            self.on_rollout_end()
        return seg

    def close(self) -> None:
        """The VecEnv is its owner's (the drop-in's user): left open, as SB3 leaves it."""


def _batch_of_one(obs: Any) -> Any:
    """One env's observation (a Dict's: a dict of arrays) as a batch of one, for the encoder."""
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]


def sb3_vecenv_backend(spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution) -> VecEnvRunner:
    """An SB3 VecEnv (a `VecEnvSource`), stepped in this process as given."""
    if not isinstance(spec, VecEnvSource):
        raise EnvError("the sb3_vecenv backend steps an SB3 VecEnv given as a VecEnvSource")
    if spec.venv.num_envs != cfg.num_envs:
        raise EnvError(f"num_envs ({cfg.num_envs}) must be the VecEnv's ({spec.venv.num_envs})")
    return VecEnvRunner(spec, encoder, dist)
