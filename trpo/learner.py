"""The learner: pi_theta and V_phi with everything an update changes (critic optimizer, update rule state,
normalizer statistics, random generators, step counters), and one update (`Learner.update`), which reads like the
paper's algorithm box:

    collect a batch with pi_old -> advantages -> policy step (the update rule: trpo's CG + line search, or another
    member of the family, update_rules.py) -> fit V -> the metrics row.

It owns the rollout collector (envs, worker processes, Ray actors) and nothing on disk: the run directory
(rundir.py), evaluation (evaluation.py) and the user-facing agent (agent.py) sit above it and it imports none of
them. Its `state_dict` is the learned part of a checkpoint; the agent adds who and what the run is.
"""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from trpo import advantages as adv_lib
from trpo import vine as vine_lib
from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution, make_distribution
from trpo.envs import EnvError, EnvSpec, env_failure
from trpo.errors import ConfigError
from trpo.networks import Actor, Critic
from trpo.normalization import ObsNormalizer, RewardScaler
from trpo.observations import MASK_KEY, ObsEncoder, UnsupportedSpaceError, mask_source
from trpo.optim import Adam
from trpo.rollout import Batch, RolloutCollector
from trpo.sequences import Inputs, Sequences, select, unit_steps, units
from trpo.shared_trunk import recheck_trust_region, unmoved_by_value_fit
from trpo.update_rules import PolicyBatch, make_update_rule, policy_stats


class Learner:
    """pi_theta, V_phi and the rest of what training changes, built for one env's spaces (`encoder`, `dist`) from
    `config`, seeded with `seed` (network initialization, rollout sampling, minibatch shuffles)."""

    def __init__(self, config: TRPOConfig, env_spec: EnvSpec, encoder: ObsEncoder, dist: ActionDistribution,
                 seed: int, device: torch.device) -> None:
        cfg = self.config = config
        self.env_spec, self.encoder, self.dist, self.seed, self.device = env_spec, encoder, dist, seed, device
        torch.manual_seed(seed)  # network initialization
        image = encoder.image
        try:
            self.actor = Actor(encoder.dim, dist, cfg.actor_hidden, cfg.activation, cfg.init_log_std,
                               encoder.mask_dim, image, cfg.image_encoder, cfg.recurrent, cfg.recurrent_hidden)
            self.critic = Critic(encoder.dim, cfg.critic_hidden, cfg.activation, image, cfg.image_encoder,
                                 cfg.recurrent, cfg.recurrent_hidden, self.actor if cfg.shared_trunk else None)
        except ValueError as exc:  # e.g. images too small for the chosen CNN
            raise ConfigError(str(exc)) from exc
        self.actor.to(device)
        self.critic.to(device)
        # Fused Adam (all critic tensors in one kernel call: ~1.5x faster value fitting on the CPU), not from
        # torch.optim, whose import costs ~70 MiB (trpo/optim.py).
        # A shared trunk kept out of the value fit (value_fit_trunk false): the value head is all the fit trains.
        fitted = self.critic.out if cfg.shared_trunk and not cfg.value_fit_trunk else self.critic
        self.critic_optimizer = Adam(fitted.parameters(), lr=cfg.value_lr, eps=cfg.value_eps)
        # Pixels are scaled to [0, 1] in the CNN; per-pixel statistics would only add noise.
        self.obs_norm = ObsNormalizer(encoder.dim, cfg.normalize_obs and image is None, cfg.clip_obs,
                                      encoder.mask_dim)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma, cfg.normalize_reward, cfg.clip_reward)
        self.sample_gen = torch.Generator(device="cpu").manual_seed(seed)  # rollouts sample on the CPU
        self.shuffle_gen = torch.Generator(device="cpu").manual_seed(seed + 1)
        self.update_rule = make_update_rule(cfg, dist, self.actor, self.shuffle_gen)
        self.num_steps = 0
        self.num_updates = 0
        self.total_steps = 0
        self.collector: RolloutCollector | None = None
        self._critic_state: Tensor | None = None  # a recurrent critic's state per env where the last batch ended

    @classmethod
    def for_env(cls, config: TRPOConfig, env_spec: EnvSpec, env: gym.Env, seed: int, device: torch.device) -> Learner:
        """A learner for the spaces of `env` (made from `env_spec`; reset once with `seed` to look for action
        masks in its info); ConfigError for a setting these spaces refuse (use_sde without Box actions,
        obs_encoder 'cnn' on vectors, vine sampling on an env whose state cannot be restored)."""
        space = env.observation_space
        try:
            dist = make_distribution(env.action_space, config.use_sde)
            info = None  # masks from a Dict observation's "action_mask" or from info["action_mask"] (mask_source)
            if not (isinstance(space, gym.spaces.Dict) and MASK_KEY in space.spaces):
                try:
                    info = env.reset(seed=seed)[1]
                except Exception as exc:
                    raise env_failure(exc, "reset()", env=env) from exc
            encoder = ObsEncoder(space, mask_source(space, dist, info), dist.mask_groups, config.obs_encoder)
            if config.sampling == "vine":
                vine_lib.check_env(env)
        except ValueError as exc:
            if isinstance(exc, UnsupportedSpaceError | EnvError):
                raise
            raise ConfigError(str(exc)) from exc
        return cls(config, env_spec, encoder, dist, seed, device)

    def collector_or_new(self) -> RolloutCollector:
        if self.collector is None:
            # Seeds differ per (re)start so a resumed run does not replay the first episodes.
            seed = self.seed + 7919 * self.num_updates
            self.collector = RolloutCollector(self.env_spec, self.config, self.encoder, self.dist, self.obs_norm,
                                              self.reward_scaler, seed)
        return self.collector

    def update(self) -> dict[str, Any]:
        """One update; returns its metrics row (logger.py documents the fields)."""
        cfg = self.config
        t0 = time.perf_counter()
        # 1. Collect a batch with pi_old (set going during the previous update's value fit, when there was one).
        collector = self.collector_or_new()
        if not collector.collecting:
            collector.start(self.actor, cfg.steps_per_env, self.sample_gen)
        batch = collector.finish(self.actor)
        t1 = time.perf_counter()
        # 2. Advantages, with V(s) and V(s') from the current critic.
        with torch.no_grad():
            if self.critic.cell is None:
                values, next_values = self.critic(batch.obs), self.critic(batch.next_obs)
            else:  # through the batch in time order, from where the last batch left the state
                values, next_values, critic_states = self._recurrent_values(batch)
        advantages, targets = adv_lib.estimate(cfg.advantage, batch.rewards, values, next_values,
                                               batch.terminated, batch.truncated, cfg.gamma, cfg.gae_lambda)
        raw_adv = advantages.reshape(-1)
        adv = adv_lib.normalize(raw_adv) if cfg.normalize_advantages else raw_adv
        # Rewards float32 holds can still sum, or square in the advantages' std, beyond it: an error, not a silent
        # string of skipped updates.
        if not bool(torch.isfinite(adv).all() and torch.isfinite(targets).all()):
            raise EnvError(_overflow_message(batch))
        # 3. Policy step: the update rule (update_rules.py), on all samples but a held-out share if asked.
        #    Vine sampling: the policy learns from the branches' Q estimates instead (vine.py).
        obs = batch.obs.reshape(-1, batch.obs.shape[-1])
        actions = batch.actions.reshape(-1, *batch.actions.shape[2:])
        vine_stats: dict[str, Any] = {}
        if batch.states is not None:  # a recurrent actor learns from sequences (truncated BPTT)
            full = PolicyBatch.sequential(self.actor, batch.obs, batch.starts, batch.states, batch.actions,
                                          batch.log_probs.reshape(-1), adv, cfg.recurrent_seq_len)
        elif batch.vine is None:
            full = PolicyBatch.of(self.actor, obs, actions, batch.log_probs.reshape(-1), adv)
        else:
            full, vine_stats = self._vine_policy_batch(batch.vine)
        train, holdout = full.split(cfg.holdout_fraction, self.shuffle_gen)
        step = self.update_rule.update(self.actor, train)
        step.update(policy_stats(self.actor, self.dist, train, holdout))
        step.update(vine_stats)
        self.num_steps += batch.env_steps
        self.num_updates += 1
        t2 = time.perf_counter()
        # The next batch needs only the new policy, not the critic: with worker processes it is collected while
        # this process fits V below (its advantages use the refitted critic all the same). A shared trunk's value
        # fit moves the policy (unless value_fit_trunk keeps it to the value head), so its next batch waits for the
        # fit and the trust region's check.
        more = self.num_steps < self.total_steps
        fits_trunk = cfg.shared_trunk and cfg.value_fit_trunk
        if more and not fits_trunk:
            collector.start(self.actor, cfg.steps_per_env, self.sample_gen)
        # 4. Fit the value function on the batch's targets.
        theta_policy = parameters_to_vector(self.actor.parameters()) if fits_trunk else None
        if self.critic.cell is None:
            value_loss = self.fit_value(obs, targets.reshape(-1).detach())
        else:
            seq, order = Sequences.of(batch.obs, batch.starts, critic_states, cfg.recurrent_seq_len)
            value_loss = self.fit_value(seq, targets.reshape(-1)[order].detach())
        if theta_policy is not None:  # 5. A shared trunk: the whole update inside the trust region again.
            step.update(recheck_trust_region(self.actor, self.dist, train, theta_policy, cfg))
            if more:
                collector.start(self.actor, cfg.steps_per_env, self.sample_gen)
        elif cfg.shared_trunk:  # the fit left the policy as the step did
            step.update(unmoved_by_value_fit(step, cfg))
        t3 = time.perf_counter()

        return self._metrics(batch, step, value_loss, values, targets, raw_adv, (t0, t1, t2, t3))

    def _vine_policy_batch(self, vine: vine_lib.VineBatch) -> tuple[PolicyBatch, dict[str, Any]]:
        """The policy's samples from the branches: K per rollout state, with the every-action weights
        (vine.all_action_advantages) or Q - mean_k Q for the self-normalized estimator; and their statistics."""
        cfg = self.config
        with torch.no_grad():
            last_values = self.critic(vine.last_obs)
        q = vine_lib.branch_q_values(vine.rewards, vine.steps, vine.terminated, last_values, cfg.gamma,
                                     cfg.vine_bootstrap)
        states, k = q.shape
        actions, old_log_probs = vine.actions, vine.old_log_probs
        run = torch.ones_like(q, dtype=torch.bool)  # branches that ran (every action: the unmasked ones)
        if vine.all_actions:
            run = old_log_probs.exp() > 0
            adv, groups = vine_lib.all_action_advantages(q, old_log_probs.exp()), None
            actions, old_log_probs = vine_lib.masked_stand_ins(actions, old_log_probs)
        else:
            adv = q - q.mean(-1, keepdim=True)
            groups = torch.arange(states, device=q.device).repeat_interleave(k)
        adv = adv.reshape(-1)
        if cfg.normalize_advantages:  # scaled only: a shift would change the every-action surrogate's gradient
            adv = adv / (adv.std() + 1e-8)
        actions = actions.reshape(states * k, *actions.shape[2:])
        batch = PolicyBatch.of(self.actor, vine.obs.repeat_interleave(k, 0), actions, old_log_probs.reshape(-1),
                               adv, groups)
        q_mean, q_spread = vine_lib.q_statistics(q, run)
        stats = {"vine_states": states, "vine_branches": int(run.sum()), "vine_steps": vine.env_steps,
                 "vine_q_mean": q_mean, "vine_q_spread": q_spread,
                 "vine_ended": float((vine.steps[run] < vine.rewards.shape[-1]).float().mean())}
        return batch, stats

    def _recurrent_values(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """V(s_t), V(s_{t+1}) and the state before each step of a recurrent critic over the batch; keeps the state
        where the batch ended for the next one (reset there anyway where the envs were reset)."""
        assert self.critic.cell is not None
        n = batch.obs.shape[1]
        state = self._critic_state
        if state is None or state.shape[0] != n:
            state = self.critic.cell.initial_state(n, self.device)
        values, next_values, before, self._critic_state = self.critic.sequence_values(
            batch.obs, batch.next_obs, batch.starts, state)
        return values, next_values, before

    def fit_value(self, inputs: Inputs, targets: Tensor) -> float:
        """Adam on the mean squared error, value_epochs passes of shuffled minibatches (a recurrent critic: of
        whole sequences, about value_minibatch steps each). Returns the loss over the whole batch after fitting."""
        cfg = self.config
        n = units(inputs)
        size = max(1, cfg.value_minibatch // unit_steps(inputs))
        penalized = cfg.shared_trunk and cfg.value_fit_trunk and cfg.value_kl_coef > 0
        if penalized:  # the policy the step left, which the fit should move as little as it can
            with torch.no_grad():
                ref, target_var = self.actor(inputs), targets.var().clamp_min(1e-8)
        features = None
        if cfg.shared_trunk and not cfg.value_fit_trunk:  # the body stays as the step left it: its features once
            with torch.no_grad():
                features = self.critic.features(inputs)
        for _ in range(cfg.value_epochs):
            order = torch.randperm(n, generator=self.shuffle_gen).to(targets.device)
            for start in range(0, n, size):
                part, rows = select(inputs, order[start : start + size])
                if features is not None:
                    self.critic.head_mse_backward(features[rows], targets[rows])
                elif penalized:
                    self.critic.penalized_backward(self.actor, self.dist, part, targets[rows], target_var,
                                                   tuple(p[rows] for p in ref), cfg.max_kl, cfg.value_kl_coef)
                else:
                    self.critic.mse_backward(part, targets[rows])  # grads of mean (V - target)^2
                self.critic_optimizer.step()
        with torch.no_grad():
            return float((self.critic(inputs) - targets).pow(2).mean())

    def _metrics(self, batch: Batch, step: dict[str, Any], value_loss: float, values: Tensor, targets: Tensor,
                 raw_adv: Tensor, times: tuple[float, float, float, float]) -> dict[str, Any]:
        t0, t1, t2, t3 = times
        var_t = float(targets.var())
        explained = 1.0 - float((targets - values).var()) / var_t if var_t > 0 else math.nan
        rets, lens = batch.episode_returns, batch.episode_lengths
        row: dict[str, Any] = {
            "update": self.num_updates,
            "step": self.num_steps,
            "episodes": len(rets),
            "episode_return_mean": float(np.mean(rets)) if rets else math.nan,
            "episode_length_mean": float(np.mean(lens)) if lens else math.nan,
            **step,
            "value_loss": value_loss,
            "explained_variance": explained,
            "advantage_mean": float(raw_adv.mean()),
            "advantage_std": float(raw_adv.std()),
            "fps": batch.env_steps / (t3 - t0),
            "time_rollout": t1 - t0,
            "time_policy": t2 - t1,
            "time_value": t3 - t2,
            "worker_restarts": batch.worker_restarts,
        }
        log_std = getattr(self.actor.head, "log_std", None)  # a Gaussian's state-independent log std
        if isinstance(log_std, Tensor):
            row["log_std_mean"] = float(log_std.detach().mean())
        return row

    def state_dict(self) -> dict[str, Any]:
        """The learned state and the counters, as a checkpoint keeps them (the agent adds the run's identity)."""
        return {
            "num_steps": self.num_steps,
            "num_updates": self.num_updates,
            "total_steps": self.total_steps,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "update_rule": self.update_rule.state_dict(),
            "obs_norm": self.obs_norm.stats.state_dict(),
            "reward_norm": self.reward_scaler.stats.state_dict(),
            "rng": {"sample": self.sample_gen.get_state(), "shuffle": self.shuffle_gen.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.update_rule.load_state_dict(state.get("update_rule", {}))  # absent from checkpoints before the rules
        self.obs_norm.stats.load_state_dict(state["obs_norm"])
        self.reward_scaler.stats.load_state_dict(state["reward_norm"])
        self.sample_gen.set_state(state["rng"]["sample"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        self.num_steps = int(state["num_steps"])
        self.num_updates = int(state["num_updates"])
        self.total_steps = int(state["total_steps"])

    def close(self) -> None:
        """Stop the env workers and close the training envs (a later update starts them again)."""
        if self.collector is not None:
            self.collector.close()
            self.collector = None


def _overflow_message(batch: Batch) -> str:
    """Why a batch's returns are not finite although every reward was (check_reward): they overflow float32."""
    largest = float(batch.rewards.abs().max())
    return (f"the returns of this batch overflow float32 (its largest reward, after any scaling, is {largest:.3g}): "
            "scale the env's rewards down, or turn on normalize_reward")
