"""Vine sampling (Schulman et al. 2015, section 5.2): Q estimates from branches off the batch's trajectories.

    1. pi_old runs the batch's trajectories (the trunk) as in single path.
    2. The rollout set: `vine_states` states per env, drawn uniformly from the trunk's steps.
    3. From each rollout state s_n, K actions a_n,k: every action of a Discrete space, or K samples from pi_old.
    4. Each (s_n, a_n,k) is followed by a branch of at most H steps from the *restored* env state, the K branches
       of one state sharing their random numbers (the env's RNG and the policy's noise): common random numbers,
       so Q(s_n, a) - Q(s_n, a') measures the actions, not the luck of the branches.
    5. Q(s_n, a_n,k) = sum_{t<L} gamma^t r_t (+ gamma^L V(s_L) where the branch was cut off or hit a time limit).
    6. The surrogate per state (objectives.py):
         every action:  L_n = sum_a pi_theta(a|s_n) Q(s_n, a)
         sampled:       L_n = sum_k w_k Q_n,k / sum_k w_k,   w_k = pi_theta(a_n,k|s_n) / pi_old(a_n,k|s_n)
       averaged over the rollout set; the KL and Fisher metric are those of the rollout states.

This module holds the env-state protocol (`StateAccess`), the plan drawn in the main process (`VinePlan`: which
states, which noise, so every rollout backend gives the same branches), the branch runner used by the env
runners (`run_branches`), and the estimators' pure functions (`branch_q_values`, `all_action_advantages`).

It never changes the networks or takes the policy step: branches act through the frozen acting policy (policy.py),
the surrogate is objectives.py's and the update the learner's. Its random numbers are the plan's, drawn from the
generator `draw_plan` is given; the envs' own RNGs are saved and restored with their state, never reseeded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution, Categorical
from trpo.envs import EnvError, check_masks, env_failure
from trpo.observations import MAX_REWARD, ObsEncoder, env_reward
from trpo.policy import Acting

# Wrappers that keep state during an episode: the attributes saved and restored with the env (TimeLimit's step
# counter; Atari's preprocessing: lives, game over and the last two frames max-pooled when an episode ends
# mid-skip; the frame stack; the sticky action's last action and repeat counters).
_WRAPPER_STATE = {
    "TimeLimit": ("_elapsed_steps",),
    "AtariPreprocessing": ("lives", "game_over", "obs_buffer"),
    "FrameStackObservation": ("obs_queue",),
    "StickyAction": ("last_action", "is_sticky_actions", "num_repeats", "repeats_taken"),
}
# Wrappers that keep none that matters once the env has been reset and stepped (the checks gym.make adds).
_STATELESS_WRAPPERS = ("OrderEnforcing", "PassiveEnvChecker")
# Classic-control envs: everything that changes during an episode (the RNG is saved for every env).
_CLASSIC_ATTRS = {
    "CartPoleEnv": ("state", "steps_beyond_terminated"),
    "PendulumEnv": ("state", "last_u"),
    "AcrobotEnv": ("state",),
    "MountainCarEnv": ("state",),
    "Continuous_MountainCarEnv": ("state",),
}
NEEDS = ("Gymnasium's MuJoCo and classic-control envs, Atari (ale-py) and MinAtar games are supported, wrapped at "
         "most by TimeLimit, OrderEnforcing and PassiveEnvChecker (as gym.make wraps them), and Atari's "
         "StickyAction, AtariPreprocessing and FrameStackObservation; another env can take part by defining "
         "save_state() -> state and restore_state(state) on its unwrapped env")


class UnsupportedEnvStateError(ValueError):
    """Vine sampling cannot save and restore this env's state; the message says why and what it would need."""


def _is_mujoco(env: gym.Env) -> bool:
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except Exception:  # mujoco not installed
        return False
    return isinstance(env, MujocoEnv)


class StateAccess:
    """Saves and restores one env's whole state: the simulator's (MuJoCo's MjData, bit for bit; a classic-control
    env's state variables; ALE's emulator; a MinAtar game object; or the env's own save_state/restore_state),
    its RNG, and its wrappers' (the TimeLimit step counter; Atari's sticky actions, preprocessing and frame
    stack), so that a branch starts exactly where the trunk was and the trunk then goes
    on as if nothing happened."""

    def __init__(self, env: gym.Env) -> None:
        self.wrappers: list[tuple[gym.Wrapper, tuple[str, ...]]] = []
        layer = env
        while isinstance(layer, gym.Wrapper):
            name = type(layer).__name__
            if name in _WRAPPER_STATE:
                self.wrappers.append((layer, _WRAPPER_STATE[name]))
            elif name not in _STATELESS_WRAPPERS:
                raise UnsupportedEnvStateError(f"vine sampling cannot save the state of wrapper {name}; {NEEDS}")
            layer = layer.env
        # The innermost env, of one of the kinds below: its own attributes (save_state, MjData, ALE, the MinAtar
        # game, a classic env's state variables) are reached by kind, none of them part of gym.Env.
        self.env: Any = layer
        name = type(layer).__name__
        if callable(getattr(layer, "save_state", None)) and callable(getattr(layer, "restore_state", None)):
            self.kind = "own"
        elif _is_mujoco(layer):
            self.kind = "mujoco"
        elif name in _CLASSIC_ATTRS:
            self.kind = "classic"
        elif name == "AtariEnv" and type(layer).__module__.startswith("ale_py"):
            self.kind = "ale"
        elif type(layer).__module__.startswith("minatar"):
            self.kind = "minatar"
        else:
            raise UnsupportedEnvStateError(f"vine sampling cannot save the state of {name}; {NEEDS}")

    def save(self) -> tuple[Any, ...]:
        env = self.env
        if self.kind == "own":
            core = env.save_state()
        elif self.kind == "mujoco":
            core = copy.copy(env.data)  # a full MjData copy (warm starts included): restores bit-exactly
        elif self.kind == "ale":
            core = env.ale.cloneState()  # sticky actions: StickyAction's state and the env RNG (see make_atari)
        elif self.kind == "minatar":
            core = copy.deepcopy(env.game)  # the game, its RandomState and the last (sticky) action
        else:
            core = {a: copy.deepcopy(getattr(env, a)) for a in _CLASSIC_ATTRS[type(env).__name__]}
        rng = env._np_random
        return (core, None if rng is None else copy.deepcopy(rng.bit_generator.state),
                [{a: copy.deepcopy(getattr(w, a)) for a in attrs} for w, attrs in self.wrappers])

    def restore(self, state: tuple[Any, ...]) -> None:
        core, rng, wrapper_states = state
        env = self.env
        if self.kind == "own":
            env.restore_state(core)
        elif self.kind == "mujoco":
            import mujoco

            mujoco.mj_copyData(env.data, env.model, core)
        elif self.kind == "ale":
            env.ale.restoreState(core)
        elif self.kind == "minatar":
            env.game = copy.deepcopy(core)
        else:
            for attr, value in core.items():
                setattr(env, attr, copy.deepcopy(value))
        if rng is not None:
            env.np_random.bit_generator.state = copy.deepcopy(rng)
        for (wrapper, _), values in zip(self.wrappers, wrapper_states, strict=True):
            for attr, value in values.items():
                setattr(wrapper, attr, copy.deepcopy(value))


def check_env(env: gym.Env) -> None:
    """Raise UnsupportedEnvStateError unless vine sampling can save and restore this env's state."""
    StateAccess(env)


# --- the plan (main process) and the branches (env runners) ---------------------------------------------------


@dataclass
class VinePlan:
    """One batch's branches, drawn in the main process from the run's generator: any backend runs the same ones.
    Arrays are indexed [env, ...]; `envs(lo, hi)` is the share of the runner owning envs lo..hi-1."""

    times: np.ndarray  # [N, M] int64: trunk steps whose states form the rollout set, ascending per env
    first: np.ndarray | None  # [N, M, K, *noise] noise of the first actions; None: every action
    continuation: np.ndarray  # [N, M, H - 1, *noise] noise after the first action, shared by the K
    num_actions: int  # K

    def envs(self, lo: int, hi: int) -> VinePlan:
        return VinePlan(self.times[lo:hi], None if self.first is None else self.first[lo:hi],
                        self.continuation[lo:hi], self.num_actions)


@dataclass
class Branches:
    """What the branches of one runner's envs returned: plain numpy, raw (unnormalized) observations and rewards."""

    actions: np.ndarray  # [k, M, K, ...] the first actions
    rewards: np.ndarray  # [k, M, K, H] float64, 0 after a branch ended
    steps: np.ndarray  # [k, M, K] int64: env steps each branch took
    terminated: np.ndarray  # [k, M, K] bool: the branch's episode terminated (nothing to bootstrap)
    last_obs: np.ndarray  # [k, M, K, D] the observation after its last step

    @staticmethod
    def concat(parts: list[Branches]) -> Branches:
        return Branches(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("actions", "rewards", "steps", "terminated", "last_obs")))


@dataclass(frozen=True)
class VineSettings:
    """The config's vine fields, as the collector needs them."""

    states: int
    actions: int
    all_actions: bool
    horizon: int

    @classmethod
    def of(cls, cfg: TRPOConfig) -> VineSettings | None:
        """The settings of a config with sampling 'vine', else None."""
        if cfg.sampling != "vine":
            return None
        return cls(cfg.vine_states, cfg.vine_actions, cfg.vine_all_actions, cfg.vine_horizon)


@dataclass
class VineBatch:
    """A batch's branches in the learner: S = N * M rollout states, K branches each; observations normalized as
    pi_old saw them, rewards scaled as the trunk's."""

    obs: Tensor  # [S, D] the rollout states
    actions: Tensor  # [S, K, ...] the first actions
    old_log_probs: Tensor  # [S, K] log pi_old(a|s)
    rewards: Tensor  # [S, K, H] scaled, 0 after a branch ended
    steps: Tensor  # [S, K] env steps of each branch
    terminated: Tensor  # [S, K] bool
    last_obs: Tensor  # [S, K, D]
    all_actions: bool  # the K branches are every action of a Discrete space

    @property
    def env_steps(self) -> int:
        return int(self.steps.sum())


def branches_every_action(dist: ActionDistribution, settings: VineSettings) -> bool:
    return settings.all_actions and isinstance(dist, Categorical)


def draw_plan(dist: ActionDistribution, noise_shape: tuple[int, ...], num_envs: int, steps: int,
              settings: VineSettings, generator: torch.Generator) -> VinePlan:
    """The rollout set (`states` distinct steps per env, uniform) and the branches' noise, `noise_shape` per action
    (Actor.noise_shape: gSDE draws an exploration matrix for every branch step)."""
    m = settings.states
    times = np.stack([np.sort(torch.randperm(steps, generator=generator)[:m].numpy()) for _ in range(num_envs)])
    every = branches_every_action(dist, settings)
    k = dist.n if every and isinstance(dist, Categorical) else settings.actions
    first = None if every else dist.noise((num_envs, m, k, *noise_shape), generator)
    continuation = dist.noise((num_envs, m, settings.horizon - 1, *noise_shape), generator)
    return VinePlan(times.astype(np.int64), None if first is None else first.numpy(), continuation.numpy(), k)


_START = np.ones(1, bool)  # branches take feed-forward policies only (config.validate): no state to reset


def run_branches(envs: list[gym.Env], saved: list[list[tuple[Any, ...]]], access: list[StateAccess],
                 start_obs: np.ndarray, plan: VinePlan, encoder: ObsEncoder, dist: ActionDistribution,
                 acting: Acting, first_index: int) -> Branches:
    """Every branch of `plan` from the saved trunk states (`saved[i][m]` of env i, observation `start_obs[i, m]`),
    then each env restored to where its trunk stopped. Errors from the user's env are raised as EnvError."""

    n_envs, n_states = plan.times.shape
    n_branches, horizon = plan.num_actions, plan.continuation.shape[2] + 1
    shape = (n_envs, n_states, n_branches)
    rewards = np.zeros((*shape, horizon))
    steps = np.zeros(shape, np.int64)
    terminated = np.zeros(shape, bool)
    last_obs = np.zeros((*shape, encoder.dim), encoder.dtype)
    first_actions = []
    for i, env in enumerate(envs):
        trunk_end = access[i].save()
        per_env = []
        for m in range(n_states):
            obs0 = start_obs[i, m][None]
            every = plan.first is None
            acts = np.arange(n_branches) if plan.first is None else acting.act(obs0, None, _START, plan.first[i, m])[0]
            per_env.append(acts)
            # Every action: the masked ones are not run (0 steps; pi_old gives them weight 0 in the surrogate).
            allowed = obs0[0, -encoder.mask_dim:] > 0 if every and encoder.mask_dim else np.ones(n_branches, bool)
            for b in np.flatnonzero(allowed):
                access[i].restore(saved[i][m])
                obs, action = obs0, acts[b : b + 1]
                for h in range(horizon):
                    if h > 0:
                        action = acting.act(obs, None, _START, plan.continuation[i, m, h - 1][None])[0]
                    try:
                        raw, reward, term, trunc, info = env.step(dist.to_env_list(action)[0])
                        reward = env_reward(reward)
                        obs = encoder.one(raw, info)[None]
                    except Exception as exc:
                        raise env_failure(exc, "step() of a vine branch", first_index + i) from exc
                    if not (abs(reward) <= MAX_REWARD and np.isfinite(obs).all()):
                        raise EnvError(f"environment returned a non-finite (or, for float32, too large) reward or "
                                       "observation in a vine branch "
                                       f"of env {first_index + i}")
                    rewards[i, m, b, h] = reward
                    steps[i, m, b] = h + 1
                    if term or trunc:
                        terminated[i, m, b] = term
                        break
                    check_masks(encoder, obs, first_index + i)
                last_obs[i, m, b] = obs[0]
            last_obs[i, m, ~allowed] = obs0[0]  # a masked branch's Q is V(s) (bootstrapped) or 0; its weight 0
        access[i].restore(trunk_end)
        first_actions.append(np.stack(per_env))
    return Branches(np.stack(first_actions), rewards, steps, terminated, last_obs)


# --- the estimators (pure functions) ---------------------------------------------------------------------------


def branch_q_values(rewards: Tensor, steps: Tensor, terminated: Tensor, last_values: Tensor, gamma: float,
                    bootstrap: bool) -> Tensor:
    """Q(s, a) per branch [..., K] from rewards [..., K, H] (0 after the branch's `steps`):
    sum_{t<L} gamma^t r_t, plus gamma^L V(s_L) where the branch did not terminate (if `bootstrap`)."""
    horizon = rewards.shape[-1]
    discounts = gamma ** torch.arange(horizon, dtype=rewards.dtype, device=rewards.device)
    q = (rewards * discounts).sum(-1)
    if bootstrap:
        q = q + torch.where(terminated, 0.0, gamma ** steps.to(rewards.dtype) * last_values)
    return q


def all_action_advantages(q: Tensor, old_probs: Tensor) -> Tensor:
    """Per-sample weights A[n, a] = K pi_old(a|s_n) (Q(s_n, a) - V(s_n)), V(s_n) = sum_a pi_old(a|s_n) Q(s_n, a),
    for the K = every action branches of each state: then mean_{n,a} r A = mean_n sum_a pi_theta(a|s_n) Q(s_n, a)
    - mean_n V(s_n), the paper's all-action surrogate less a constant, in the single-path form mean(r A) that
    every update rule takes."""
    baseline = (old_probs * q).sum(-1, keepdim=True)
    return q.shape[-1] * old_probs * (q - baseline)


def q_statistics(q: Tensor, run: Tensor) -> tuple[float, float]:
    """Mean Q over the branches that ran (run [S, K]), and the mean over states of Q's std across a state's."""
    if bool(run.all()):
        return float(q.mean()), float(q.std(-1, correction=0).mean())
    count = run.sum(-1)
    state_mean = torch.where(run, q, 0.0).sum(-1) / count
    spread = (torch.where(run, q - state_mean[:, None], 0.0).pow(2).sum(-1) / count).sqrt()
    return float(q[run].mean()), float(spread.mean())


def masked_stand_ins(actions: Tensor, old_log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Every-action branches [S, K] with actions masked at their state (pi_old(a|s) = 0, so weight 0 in
    all_action_advantages) stand in as the state's most probable action, with its log pi_old: they still add
    nothing to the surrogate, and their ratio pi_theta / pi_old stays finite (exp of two masked log-probabilities,
    both about -1e9, could overflow). States keep their K samples, so the mean KL weighs them as before."""
    masked = old_log_probs.exp() == 0
    if not masked.any():
        return actions, old_log_probs
    best = old_log_probs.argmax(-1, keepdim=True)
    return (torch.where(masked, actions.gather(1, best), actions),
            torch.where(masked, old_log_probs.gather(1, best), old_log_probs))
