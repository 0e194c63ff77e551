"""The rollout seam (`Backend`) and the runner every backend uses: k envs stepped for a whole segment with a frozen
policy, autoresetting ended episodes (vector_mode 'sync' is an `EnvRunner` in this process).

`terminated` and `truncated` are kept apart. At every step where an episode ends, the segment stores the *true*
final observation as `next_obs` (the env is reset only after it is recorded), so a time-limit truncation can
bootstrap from V(final obs) while a termination does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution
from trpo.envs import EnvError, EnvSpec, check_masks, check_reward, close_env, env_failure, make_env
from trpo.observations import MAX_REWARD, ObsEncoder, env_reward
from trpo.policy import Acting, PeriodicNoise
from trpo.vine import Branches, StateAccess, VinePlan, run_branches

# A batch's pre-drawn noise, indexed noise[t] per step and noise[:, lo:hi] per share of the envs: [T, N, head_dim],
# or gSDE's exploration matrices (policy.batch_noise).
BatchNoise = np.ndarray | PeriodicNoise


@dataclass
class Segment:
    """What one runner collected for its k envs: plain numpy, so it crosses process boundaries cheaply.
    Observations are encoded but *not* normalized; rewards are raw."""

    obs: np.ndarray  # [T, k, D]
    next_obs: np.ndarray  # [T, k, D]: the true final observation where an episode ended
    actions: np.ndarray  # [T, k, ...] as sampled (Box actions unclipped)
    rewards: np.ndarray  # [T, k] float64
    terminated: np.ndarray  # [T, k] bool
    truncated: np.ndarray  # [T, k] bool
    starts: np.ndarray  # [T, k] bool: obs[t] is the first observation of an episode
    states: np.ndarray | None  # [T, k, state_dim]: a recurrent policy's state before step t (None: feed-forward)
    episode_returns: list[float]
    episode_lengths: list[int]
    branches: Branches | None = None  # vine sampling's branches off this segment

    @classmethod
    def empty(cls, steps: int, k: int, encoder: ObsEncoder, state: np.ndarray | None) -> Segment:
        """A segment of `steps` x `k` envs to fill in (with the states' rows where the policy has a state)."""
        d, dtype = encoder.dim, encoder.dtype
        return cls(obs=np.zeros((steps, k, d), dtype), next_obs=np.zeros((steps, k, d), dtype), actions=np.empty(0),
                   rewards=np.zeros((steps, k)), terminated=np.zeros((steps, k), bool),
                   truncated=np.zeros((steps, k), bool), starts=np.zeros((steps, k), bool),
                   states=None if state is None else np.zeros((steps, *state.shape), state.dtype),
                   episode_returns=[], episode_lengths=[])

    def record(self, t: int, obs: np.ndarray, starts: np.ndarray, state: np.ndarray | None) -> None:
        """Step t's inputs: the observations, which envs start an episode there, the state before the step."""
        self.obs[t] = obs
        self.starts[t] = starts
        if self.states is not None:
            self.states[t] = state


class Backend(Protocol):
    """The rollout seam: how a batch's envs are stepped. `EnvRunner` (vector_mode 'sync', in this process),
    `workers.WorkerPool` ('subprocess'), `ray_actors.RayPool` ('ray'); each gives the same segments for the same
    acting policy and noise. Adding a backend: a module with a class of these members, a factory (`BackendFactory`), and
    its line in `collector.BACKENDS`."""

    restarts: int  # workers replaced after dying (Ray only; 0 elsewhere)

    def reset(self, seed: int) -> np.ndarray: ...

    def start(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> None: ...

    def finish(self) -> list[Segment]: ...

    def drop(self) -> None: ...

    def close(self) -> None: ...


BackendFactory = Callable[[EnvSpec, TRPOConfig, ObsEncoder, ActionDistribution], Backend]


def sync_backend(spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution) -> EnvRunner:
    """vector_mode 'sync': every env in this process."""
    if isinstance(spec, gym.Env) and cfg.num_envs != 1:
        raise EnvError("an env instance serves only num_envs=1; pass an id or a factory")
    return EnvRunner([make_env(spec) for _ in range(cfg.num_envs)], encoder, dist, 0)


class InProcess:
    """The `Backend` calls of a runner in this process: `start` keeps the batch's arguments, `finish` runs them
    (`run(acting, noise, plan)`), so the batch is collected when the learner asks for it."""

    pending: tuple[Any, ...] | None = None
    obs: np.ndarray  # [k, D]: each env's current observation, encoded
    ep_return: np.ndarray  # [k]: the running episodes' returns and lengths so far
    ep_length: np.ndarray
    starts: np.ndarray  # [k] bool: which env's next step starts an episode
    state: Any  # the acting policy's recurrent state, carried from batch to batch

    def run(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> Segment:
        raise NotImplementedError

    def start(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> None:
        self.pending = (acting, noise, plan)

    def finish(self) -> list[Segment]:
        assert self.pending is not None, "finish() before start()"
        args, self.pending = self.pending, None
        return [self.run(*args)]

    def drop(self) -> None:
        self.pending = None

    def _all_restarted(self) -> np.ndarray:
        """After every env was reset: no return or length counted, each env starting an episode, no state yet; the
        first observations."""
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        self.starts[:] = True
        self.state = None
        first: np.ndarray = self.obs.copy()
        return first


class EnvRunner(InProcess):
    """Steps k envs for a whole segment with a frozen policy, autoresetting ended episodes. Lives in this
    process (vector_mode 'sync': a `Backend` that collects the batch when `finish` asks for it) or in a worker
    process ('subprocess'); both give the same results."""

    restarts = 0

    def __init__(self, envs: list[gym.Env], encoder: ObsEncoder, dist: ActionDistribution, first_index: int) -> None:
        self.envs = envs
        self.encoder = encoder
        self.dist = dist
        self.first_index = first_index  # global index of envs[0], for error messages and seeds
        self.obs = np.zeros((len(envs), encoder.dim), dtype=encoder.dtype)
        self.ep_return = np.zeros(len(envs))
        self.ep_length = np.zeros(len(envs), dtype=np.int64)
        self.starts = np.ones(len(envs), bool)  # which env's next step starts an episode
        self.state: Any = None  # the acting policy's recurrent state, carried from batch to batch
        self.access: list[StateAccess] | None = None  # made at the first vine batch
        self.pending: tuple[Any, ...] | None = None  # start()'s arguments, run by finish()

    def _check_finite(self, obs: np.ndarray, what: str) -> None:
        """One check for all k envs' encoded observations [k, D]; finds the env only when one is bad."""
        if not np.isfinite(obs).all():
            i = int(np.flatnonzero(~np.isfinite(obs).all(axis=1))[0])
            raise EnvError(f"environment returned a non-finite {what} (NaN or inf) in env {self.first_index + i}")

    def _check_masks(self) -> None:
        check_masks(self.encoder, self.obs, self.first_index)

    def reset(self, seed: int) -> np.ndarray:
        for i, env in enumerate(self.envs):
            try:
                # Seeds wrap at 2**32: some envs seed numpy's legacy RandomState, which takes no larger ones.
                self.obs[i] = self.encoder.one(*env.reset(seed=(seed + self.first_index + i) % 2**32))
            except Exception as exc:
                raise env_failure(exc, "reset()", self.first_index + i, env) from exc
        self._check_finite(self.obs, "observation")
        self._check_masks()
        return self._all_restarted()

    def run(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> Segment:
        """Step every env noise.shape[0] times, the actions at step t from `acting` with noise[t] (policy.py); a
        recurrent policy's state goes on from where the last segment left it. With a vine plan, the env states at
        the plan's steps are saved on the way, and the branches run after."""
        steps, k = noise.shape[0], len(self.envs)
        if self.state is None:
            self.state = acting.initial_state(k)
        save_at = np.zeros((steps, k), bool)
        saved: list[list[tuple[Any, ...]]] = [[] for _ in range(k)]
        access: list[StateAccess] = []
        if plan is not None:
            if self.access is None:
                self.access = [StateAccess(env) for env in self.envs]
            access = self.access
            for i in range(k):
                save_at[plan.times[i], i] = True
        seg = Segment.empty(steps, k, self.encoder, self.state)
        actions = []
        for t in range(steps):
            seg.record(t, self.obs, self.starts, self.state)
            if plan is not None:  # (flatnonzero costs ~10% of a MuJoCo step here: not without a vine plan)
                for j in np.flatnonzero(save_at[t]):
                    saved[j].append(access[j].save())
            action, self.state = acting.act(self.obs, self.state, self.starts, noise[t])
            actions.append(action)
            env_actions = self.dist.to_env_list(action)
            ended = False
            for i, env in enumerate(self.envs):
                try:  # the user's env: whatever it raises, or returns that cannot be read, becomes an EnvError
                    raw, reward, terminated, truncated, info = env.step(env_actions[i])
                    reward = env_reward(reward)
                    seg.next_obs[t, i] = self.encoder.one(raw, info)
                except Exception as exc:
                    raise env_failure(exc, "step()", self.first_index + i, env) from exc
                if not abs(reward) <= MAX_REWARD:  # inlined check_reward's test: this is the hot loop
                    check_reward(reward, env, self.first_index + i, int(self.ep_length[i]) + 1)
                seg.rewards[t, i], seg.terminated[t, i], seg.truncated[t, i] = reward, terminated, truncated
                self.starts[i] = terminated or truncated
                self.ep_return[i] += reward
                self.ep_length[i] += 1
                if terminated or truncated:
                    ended = True
                    seg.episode_returns.append(float(self.ep_return[i]))
                    seg.episode_lengths.append(int(self.ep_length[i]))
                    self.ep_return[i], self.ep_length[i] = 0.0, 0
                    try:
                        self.obs[i] = self.encoder.one(*env.reset())
                    except Exception as exc:
                        raise env_failure(exc, "reset()", self.first_index + i, env) from exc
                else:
                    self.obs[i] = seg.next_obs[t, i]
            if ended:
                done = seg.terminated[t] | seg.truncated[t]
                self._check_finite(np.where(done[:, None], seg.next_obs[t], 0.0), "final observation")
            self._check_finite(self.obs, "observation")
            self._check_masks()
        seg.actions = np.stack(actions)
        if plan is not None:
            start_obs = np.stack([seg.obs[plan.times[i], i] for i in range(k)])
            seg.branches = run_branches(self.envs, saved, access, start_obs, plan, self.encoder, self.dist,
                                        acting, self.first_index)
        return seg

    def close(self) -> None:
        for i, env in enumerate(self.envs):
            close_env(env, self.first_index + i)

