"""The collector: batches of N envs' steps with pi_old, from the backend the config names (`BACKENDS`), into a
typed `Batch` (observations normalized with pi_old's statistics, rewards scaled in time order). It reads the actor
(parameters and log-probabilities, without gradients) but never changes it, and knows nothing of the critic,
advantages, the update or the run directory (learner.py's); a batch's noise and vine plan come from the generator
the learner passes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from trpo.config import TRPOConfig, available_cores
from trpo.distributions import ActionDistribution
from trpo.envs import EnvSpec
from trpo.networks import Actor
from trpo.normalization import FrozenObsNorm, ObsNormalizer, RewardScaler
from trpo.observations import ObsEncoder
from trpo.policy import Acting, PeriodicNoise, batch_noise, snapshot
from trpo.rollout.envpool_backend import envpool_backend
from trpo.rollout.ray_actors import ray_backend
from trpo.rollout.runner import Backend, BackendFactory, Segment, sync_backend
from trpo.rollout.sb3_vecenv import VecEnvSource, sb3_vecenv_backend
from trpo.rollout.workers import subprocess_backend, worker_count
from trpo.sequences import Sequences
from trpo.vine import Branches, VineBatch, VinePlan, VineSettings, draw_plan


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
    starts: Tensor  # [T, N] bool: obs[t] is the first observation of an episode
    states: Tensor | None  # [T, N, state_dim]: a recurrent actor's state before step t (None: feed-forward)
    episode_returns: list[float] = field(default_factory=list)  # raw returns of episodes ending in the batch
    episode_lengths: list[int] = field(default_factory=list)
    worker_restarts: int = 0  # Ray actors replaced while collecting this batch (their share collected again)
    vine: VineBatch | None = None  # vine sampling's branches (the policy learns from these)

    @property
    def env_steps(self) -> int:
        """Env steps taken for this batch: the trajectories' and the vine branches'."""
        return self.obs.shape[0] * self.obs.shape[1] + (0 if self.vine is None else self.vine.env_steps)


@dataclass
class _Pending:
    """A batch set going by `RolloutCollector.start`: pi_old as the envs see it, and the actor it came from."""

    acting: Acting
    obs_norm: FrozenObsNorm  # with obs_norm_update 'step': the statistics as the batch starts (not used to normalize)
    noise: np.ndarray | PeriodicNoise  # [T, N, head_dim], or gSDE's matrices
    generator: torch.Generator
    theta: Tensor  # the actor's parameters at start()
    plan: VinePlan | None


def _episodes_in_time_order(parts: list[Segment], done: np.ndarray) -> tuple[list[float], list[int]]:
    """The episodes that ended in the batch, ordered by the step they ended at, then by env, whichever runner
    stepped them: the order one runner of all envs records them in, so that their mean (a logged metric) is the
    same float however the envs are split over workers. Each runner lists its envs' episodes in that order, one
    per done step of its columns of `done` [T, N]."""
    if len(parts) == 1:
        return list(parts[0].episode_returns), list(parts[0].episode_lengths)
    keyed: list[tuple[int, int, float, int]] = []  # (step, env, return, length)
    lo = 0
    for part in parts:
        k = part.obs.shape[1]
        steps, envs = np.nonzero(done[:, lo : lo + k])  # row-major: by step, then by env, as the runner appends
        assert len(steps) == len(part.episode_returns), "a runner's episodes do not match its done steps"
        keyed += zip(steps.tolist(), (envs + lo).tolist(), part.episode_returns, part.episode_lengths, strict=True)
        lo += k
    keyed.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in keyed], [e[3] for e in keyed]


def _flat_params(actor: Actor) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in actor.parameters()])


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two flat parameter vectors are bit for bit the same. Not torch.equal: NaN != NaN, so a policy with a
    NaN weight would never match itself, and each batch would be dropped and collected again, without end."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# vector_mode -> the backend's factory; a new backend is a module with a factory and a line here. 'sb3_vecenv' is no
# vector_mode: an SB3 VecEnv (trpo.sb3's drop-in) chooses it by its env spec (`backend_for`).
BACKENDS: dict[str, BackendFactory] = {"sync": sync_backend, "subprocess": subprocess_backend, "ray": ray_backend,
                                       "envpool": envpool_backend, "sb3_vecenv": sb3_vecenv_backend}


def backend_for(spec: EnvSpec, cfg: TRPOConfig) -> str:
    """The `BACKENDS` key that steps `spec`: an SB3 VecEnv's own, else the config's vector_mode."""
    return "sb3_vecenv" if isinstance(spec, VecEnvSource) else cfg.vector_mode


def layout(cfg: TRPOConfig) -> str:
    """Where a run's envs step and its learner computes, in words (shown when a run starts: the worker layout
    decides how much of the machine a run uses)."""
    n, mode = cfg.num_envs, cfg.vector_mode
    envs = f"{n} env{'s' * (n != 1)}"
    if mode == "sync":
        where = f"{envs} stepped in this process"
    else:
        w = worker_count(cfg)
        unit = {"subprocess": "worker process", "ray": "Ray actor", "envpool": "envpool thread"}[mode]
        where = f"{envs} on {w} {unit}{('es' if unit.endswith('s') else 's') * (w != 1)} ({mode})"
    threads = cfg.torch_threads or torch.get_num_threads()
    return (f"{where}; the learner in this process on {cfg.device}, {threads} torch thread{'s' * (threads != 1)}; "
            f"{available_cores()} cores available")


class RolloutCollector:
    """Collects batches from `num_envs` envs, in this process, in worker processes or on Ray actors.

    pi_old is frozen for the whole batch: the actor's weights *and* the observation-normalization statistics,
    which are updated with the batch's observations only after it is collected (obs_norm_update 'step': moved at
    every step by the acting policy, and replayed here on the batch, so the batch holds the observations it saw).
    Rewards are scaled afterwards, in time order, so the result does not depend on how envs are split over
    processes.
    """

    def __init__(self, spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution,
                 obs_norm: ObsNormalizer, reward_scaler: RewardScaler, seed: int) -> None:
        """`cfg` says the rest: the backend (vector_mode), the device, vine sampling, the recurrent sequence length
        and gSDE's resampling. The encoder, distribution and statistics are the agent's own objects, shared."""
        self.vine = VineSettings.of(cfg)
        self.seq_len = cfg.recurrent_seq_len
        self.sde_sample_freq = cfg.sde_sample_freq
        self.encoder = encoder
        self.dist = dist
        self.obs_norm = obs_norm
        self.reward_scaler = reward_scaler
        self.device = torch.device(cfg.device)
        self.num_envs = cfg.num_envs
        self.per_step = cfg.obs_norm_update == "step" and obs_norm.enabled  # images are never normalized
        self.runner: Backend = BACKENDS[backend_for(spec, cfg)](spec, cfg, encoder, dist)
        try:
            first = self.runner.reset(seed)
            if not self.per_step:  # per step: the acting policy merges these at the batch's first step
                obs_norm.update(first)
        except BaseException:
            self.runner.close()  # worker processes, Ray actors and a Ray runtime started for them
            raise
        self._pending: _Pending | None = None

    @torch.no_grad()
    def start(self, actor: Actor, steps: int, generator: torch.Generator) -> None:
        """Freeze pi_old (the acting policy: a copy of the actor and the observation statistics, policy.py), draw
        the noise of the whole batch from `generator`, and set the envs going. With worker processes this returns
        at once, so the caller can fit the critic while the batch is collected (the batch does not depend on the
        critic)."""
        if self._pending is not None:
            raise RuntimeError("a batch is already being collected; call finish() first")
        frozen = self.obs_norm.frozen()
        acting = snapshot(actor, self.dist, self.obs_norm.running() if self.per_step else frozen)
        noise = batch_noise(actor, self.dist, steps, self.num_envs, self.sde_sample_freq, generator)
        plan = None if self.vine is None else draw_plan(self.dist, actor.noise_shape, self.num_envs, steps, self.vine,
                                                        generator)
        self.runner.start(acting, noise, plan)
        self._pending = _Pending(acting, frozen, noise, generator, _flat_params(actor), plan)

    @property
    def collecting(self) -> bool:
        """Whether `start` set a batch going that `finish` has not yet returned."""
        return self._pending is not None

    @torch.no_grad()
    def finish(self, actor: Actor) -> Batch:
        """The batch that `start` set going, with log pi_old(a|s) computed in one batched pass of `actor`, which
        must still be pi_old: if its parameters changed since `start`, that batch is dropped and a new one
        collected."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("no batch is being collected; call start() first")
        steps, n, d = pending.noise.shape[0], self.num_envs, self.encoder.dim
        if not _same_bits(pending.theta, _flat_params(actor)):
            self.runner.drop()  # set going with another policy
            return self.collect(actor, steps, pending.generator)
        restarts = self.runner.restarts
        parts = self.runner.finish()

        def cat(name: str) -> np.ndarray:  # a field of the runners' segments, their envs side by side
            return np.concatenate([getattr(p, name) for p in parts], axis=1)

        raw_obs, raw_next = cat("obs"), cat("next_obs")
        terminated, truncated, rewards = cat("terminated"), cat("truncated"), cat("rewards")

        if self.per_step:  # the statistics step by step, as the acting policy moved them; next_obs[t] as obs[t]
            normed, norms = self.obs_norm.replay(raw_obs)
            obs = torch.as_tensor(normed, device=self.device)
            next_obs = torch.as_tensor(np.stack([norms[t](raw_next[t]) for t in range(steps)]), device=self.device)
        else:
            frozen = pending.obs_norm
            obs = torch.as_tensor(frozen(raw_obs), device=self.device)
            next_obs = torch.as_tensor(frozen(raw_next), device=self.device)
            # Every observation the envs returned from a step, final ones included.
            self.obs_norm.update(raw_next.reshape(-1, d))
        scaled = np.stack([self.reward_scaler(rewards[t], terminated[t] | truncated[t]) for t in range(steps)])
        actions = torch.as_tensor(cat("actions"), device=self.device)
        flat_actions = actions.reshape(steps * n, *actions.shape[2:])
        starts = torch.as_tensor(cat("starts"), device=self.device)
        states = None if parts[0].states is None else torch.as_tensor(cat("states"), device=self.device)
        if states is None:
            log_probs = self.dist.log_prob(actor(obs.reshape(steps * n, d)), flat_actions)
        else:  # through time, from the states the rollout had, as the update will compute them
            seq, order = Sequences.of(obs, starts, states, self.seq_len)
            log_probs = torch.empty(steps * n, device=self.device)
            log_probs[order] = self.dist.log_prob(actor(seq), flat_actions[order])
        returns, lengths = _episodes_in_time_order(parts, terminated | truncated)
        return Batch(
            obs=obs,
            next_obs=next_obs,
            actions=actions,
            log_probs=log_probs.reshape(steps, n),
            rewards=torch.as_tensor(scaled, device=self.device),
            terminated=torch.as_tensor(terminated, device=self.device),
            truncated=torch.as_tensor(truncated, device=self.device),
            starts=starts,
            states=states,
            episode_returns=returns,
            episode_lengths=lengths,
            worker_restarts=self.runner.restarts - restarts,
            vine=None if pending.plan is None else self._vine_batch(actor, pending, raw_obs, parts),
        )

    def _vine_batch(self, actor: Actor, pending: _Pending, raw_obs: np.ndarray, parts: list[Segment]) -> VineBatch:
        """The branches as tensors: rollout states and final observations normalized with pi_old's statistics,
        rewards scaled with the statistics the trunk's rewards left (the branches do not update either)."""
        plan, frozen = pending.plan, pending.obs_norm
        assert plan is not None
        br = Branches.concat([p.branches for p in parts if p.branches is not None])
        n, m, k = br.steps.shape
        states = np.concatenate([raw_obs[plan.times[i], i] for i in range(n)])  # [N * M, D], env-major
        obs = torch.as_tensor(frozen(states), device=self.device)
        actions = torch.as_tensor(br.actions.reshape(n * m * k, *br.actions.shape[3:]), device=self.device)
        log_probs = self.dist.log_prob(actor(obs.repeat_interleave(k, 0)), actions)

        def as_tensor(a: np.ndarray) -> Tensor:  # [N, M, ...] -> [N * M, ...]
            return torch.as_tensor(a.reshape(n * m, *a.shape[2:]), device=self.device)

        return VineBatch(
            obs=obs,
            actions=actions.reshape(n * m, k, *actions.shape[1:]),
            old_log_probs=log_probs.reshape(n * m, k),
            rewards=as_tensor(self.reward_scaler.scale(br.rewards)),
            steps=as_tensor(br.steps),
            terminated=as_tensor(br.terminated),
            last_obs=as_tensor(frozen(br.last_obs)),
            all_actions=plan.first is None,
        )

    def collect(self, actor: Actor, steps: int, generator: torch.Generator) -> Batch:
        """`steps` steps of every env with pi_old = the actor as it is now: `start` then `finish`."""
        self.start(actor, steps, generator)
        return self.finish(actor)

    def close(self) -> None:
        if self._pending is not None:
            # Read the batch in flight: a worker blocked writing it to a full pipe would never see "close".
            with contextlib.suppress(Exception):
                self.runner.drop()
        self._pending = None
        self.runner.close()

