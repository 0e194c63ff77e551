"""Validation of a `TRPOConfig`: the ranges of its fields and the combinations a run refuses, each refused with one
ConfigError line naming the field (the types are checked on construction, by trpo.coerce). `validate` is what
TRPOConfig.__post_init__ calls; it stays importable from trpo.config.

Imports trpo.coerce and trpo.errors only (trpo.config, for the type, under TYPE_CHECKING): config imports this module.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING

from trpo.coerce import show
from trpo.errors import ConfigError

if TYPE_CHECKING:
    from trpo.config import TRPOConfig

_POSITIVE_INT_OR_NONE = ("max_episode_steps",)
_POSITIVE_INT = ("num_envs", "steps_per_env", "cg_iters", "max_backtracks", "value_minibatch", "fisher_subsample",
                 "vine_states", "vine_horizon", "eval_max_steps", "recurrent_hidden", "recurrent_seq_len")
_NON_NEGATIVE_INT = ("value_epochs", "checkpoint_every", "eval_episodes", "num_workers", "max_worker_restarts",
                     "save_every", "keep_checkpoints", "eval_every", "kfac_samples")
_POSITIVE_FLOAT = ("max_kl", "value_lr", "value_eps", "clip_obs", "clip_reward", "cg_tol", "kl_target")
_NON_NEGATIVE_FLOAT = ("target_kl", "penalty_coef", "value_kl_coef")
_UNIT_INTERVAL = ("gamma", "gae_lambda")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS reports one (a container's or taskset's share),
    else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def validate(cfg: TRPOConfig) -> None:
    """Raise ConfigError naming the first value out of its field's range (the types are checked on construction)."""
    if cfg.eval_every and not cfg.eval_episodes:
        raise ConfigError(f"eval_every ({cfg.eval_every}) needs eval_episodes > 0")
    for name in _POSITIVE_INT:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    for name in _POSITIVE_INT_OR_NONE:
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be a positive integer (empty: the env's own), got {getattr(cfg, name)}")
    for name in _NON_NEGATIVE_INT:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in _POSITIVE_FLOAT:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value}")
    for name in _NON_NEGATIVE_FLOAT:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a number >= 0, got {value}")
    if cfg.policy_lr is not None and not (math.isfinite(cfg.policy_lr) and cfg.policy_lr > 0):
        raise ConfigError(f"policy_lr must be a positive number, got {cfg.policy_lr}")
    if cfg.policy_epochs is not None and cfg.policy_epochs <= 0:
        raise ConfigError(f"policy_epochs must be a positive integer, got {cfg.policy_epochs}")
    if cfg.policy_minibatch is not None and cfg.policy_minibatch < 0:
        raise ConfigError(f"policy_minibatch must be >= 0 (0: the whole batch), got {cfg.policy_minibatch}")
    if cfg.max_grad_norm is not None and not (math.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm >= 0):
        raise ConfigError(f"max_grad_norm must be >= 0 (0: no clipping), got {cfg.max_grad_norm}")
    if not 0.0 < cfg.clip_range < 1.0:
        raise ConfigError(f"clip_range must lie in (0, 1), got {cfg.clip_range}")
    if not 0.0 <= cfg.holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must lie in [0, 1), got {cfg.holdout_fraction}")
    for name in _UNIT_INTERVAL:
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {getattr(cfg, name)}")
    if cfg.num_workers > cfg.num_envs:
        raise ConfigError(f"num_workers must be <= num_envs ({cfg.num_envs}), got {cfg.num_workers}")
    if not 0.0 < cfg.backtrack_ratio < 1.0:
        raise ConfigError(f"backtrack_ratio must lie in (0, 1), got {cfg.backtrack_ratio}")
    if not (math.isfinite(cfg.cg_damping) and cfg.cg_damping >= 0):
        raise ConfigError(f"cg_damping must be >= 0, got {cfg.cg_damping}")
    if cfg.fisher_product == "layerwise" and cfg.recurrent != "none":
        raise ConfigError("fisher_product 'layerwise' takes feed-forward actors (a recurrent cell applies its layers "
                          "once per step: no per-layer product); use 'gauss_newton'")
    if cfg.natural_gradient != "cg":
        if cfg.recurrent != "none":
            raise ConfigError(f"natural_gradient {cfg.natural_gradient!r} takes feed-forward actors (a recurrent cell "
                              f"applies its layers once per step: no Kronecker block); use natural_gradient 'cg'")
        if cfg.cg_damping <= 0:
            raise ConfigError(f"natural_gradient {cfg.natural_gradient!r} needs cg_damping > 0 (K-FAC's factors are "
                              f"often singular), got {cfg.cg_damping}")
    if cfg.kfac_samples and cfg.natural_gradient == "cg":
        raise ConfigError(f"kfac_samples ({cfg.kfac_samples}) samples K-FAC's factors: it needs natural_gradient "
                          f"'kfac' or 'kfac_cg', got 'cg'")
    # torch takes any count, then crashes or stalls far above the cores (100000 threads segfaulted, 20000 failed in
    # libgomp, 5000 stalled): refuse before a run starts.
    cores = available_cores()
    if not 0 <= cfg.torch_threads <= cores:
        raise ConfigError(f"torch_threads must lie in [0, {cores}] (the cores this machine gives the process; 0: "
                          f"torch's default), got {cfg.torch_threads}")
    if not math.isfinite(cfg.init_log_std):
        raise ConfigError(f"init_log_std must be finite, got {cfg.init_log_std}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", cfg.device):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {show(cfg.device)}")
    for name in ("actor_hidden", "critic_hidden"):
        sizes = getattr(cfg, name)
        if not sizes or any(s <= 0 for s in sizes):
            raise ConfigError(f"{name} must be a non-empty list of positive sizes, got {list(sizes)}")
    if cfg.shared_trunk and tuple(cfg.critic_hidden) != tuple(cfg.actor_hidden):
        raise ConfigError(f"shared_trunk: the value function's body is the policy's, so critic_hidden must equal "
                          f"actor_hidden ({list(cfg.actor_hidden)}), got {list(cfg.critic_hidden)}")
    if not cfg.value_fit_trunk and not cfg.shared_trunk:
        raise ConfigError("value_fit_trunk false keeps a shared trunk out of the value fit: it needs shared_trunk true")
    if cfg.sde_sample_freq == 0 or cfg.sde_sample_freq < -1:
        raise ConfigError(f"sde_sample_freq must be -1 (once per batch) or a positive number of steps, got "
                          f"{cfg.sde_sample_freq}")
    if cfg.vine_actions < 2:
        raise ConfigError(f"vine_actions must be >= 2 (the estimator compares the branches), got {cfg.vine_actions}")
    if cfg.obs_norm_update == "step":
        if not cfg.normalize_obs:
            raise ConfigError("obs_norm_update 'step' says when observation statistics move: it needs normalize_obs")
        if cfg.vector_mode in ("subprocess", "ray") and cfg.num_workers != 1 and cfg.num_envs > 1:
            raise ConfigError(f"obs_norm_update 'step' merges every env's observation at each step: the envs must step "
                              f"in one process (num_workers 1, or vector_mode sync or envpool), got vector_mode "
                              f"{cfg.vector_mode!r} with num_workers {cfg.num_workers}")
        if cfg.sampling == "vine":
            raise ConfigError("obs_norm_update 'step' works with single-path sampling only: vine branches restart "
                              "from saved states, outside the stream of observations the statistics follow")
    if cfg.sampling == "vine":
        if cfg.recurrent != "none":
            raise ConfigError("sampling 'vine' takes feed-forward policies only: a branch from a restored env state "
                              "would need the recurrent state of its trunk too; use recurrent 'none'")
        if cfg.vine_states > cfg.steps_per_env:
            raise ConfigError(f"vine_states must be <= steps_per_env ({cfg.steps_per_env}), got {cfg.vine_states}")
        if cfg.update_rule == "ppo":
            raise ConfigError("sampling 'vine' works with update rules trpo, npg, pg and penalty; ppo's clipped "
                              "surrogate has no form for the vine estimators")
