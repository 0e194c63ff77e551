"""Advantage estimators as pure functions of [T, N] tensors (time-major, one column per env).
Imports nothing of trpo: no envs, networks, config (the estimator comes as a name) or disk, and no randomness.

Conventions shared by every function:
- `next_values[t]` is V(s_{t+1}) of the *true* next observation: at a time-limit truncation it is the value of
  the final observation the env returned (not of the reset observation), so truncations bootstrap.
- `terminated[t]`: s_{t+1} is terminal, its value is 0 (no bootstrap).
- `dones[t]` = terminated or truncated: the recursion stops there; the last row of the batch also stops it
  (bootstrapping from next_values[T-1]).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def td_residuals(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)."""
    return rewards + gamma * (~terminated).to(rewards.dtype) * next_values - values


def _continues(dones: Tensor) -> Tensor:
    """1 where the recursion carries over from t+1 to t: not done, and not the batch's last row."""
    cont = (~dones).to(torch.float32)
    cont[-1] = 0.0
    return cont


def _backward_recursion(a: Tensor, b: Tensor) -> Tensor:
    """x_t = a_t + b_t * x_{t+1} for t = T-1 .. 0, with x_T = 0. The loop runs in numpy: each step is a few
    microseconds on rows of N envs, several times cheaper than the same torch ops."""
    a_np, b_np = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    out = np.empty_like(a_np)
    running = np.zeros_like(a_np[0])
    for t in range(a_np.shape[0] - 1, -1, -1):
        running = a_np[t] + b_np[t] * running
        out[t] = running
    return torch.from_numpy(out).to(a.device)


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> Tensor:
    """Generalized advantage estimation (Schulman et al., 2016, eq. 16): A_t = delta_t + gamma*lam*A_{t+1}."""
    deltas = td_residuals(rewards, values, next_values, terminated, gamma)
    return _backward_recursion(deltas, gamma * lam * _continues(dones).to(rewards.dtype))


def discounted_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, dones: Tensor, gamma: float
) -> Tensor:
    """G_t = r_t + gamma * G_{t+1} within an episode; bootstraps from V(s_{t+1}) at a truncation or the batch
    end, and from 0 at a termination."""
    cont = _continues(dones).to(rewards.dtype)
    alive = (~terminated).to(rewards.dtype)
    # G_t = r_t + gamma * alive_t * (cont_t * G_{t+1} + (1 - cont_t) * V(s_{t+1}))
    return _backward_recursion(rewards + gamma * alive * (1 - cont) * next_values, gamma * alive * cont)


def estimate(
    kind: str,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """(advantages, value targets) for the configured estimator.

    - 'gae': GAE(gamma, lambda); targets A + V (the lambda-return).
    - 'td': the one-step TD residual delta_t; targets r + gamma V(s').
    - 'return': the discounted return following t, with no baseline; targets the same return.
    """
    dones = terminated | truncated
    if kind == "gae":
        adv = gae(rewards, values, next_values, terminated, dones, gamma, lam)
        return adv, adv + values
    if kind == "td":
        adv = td_residuals(rewards, values, next_values, terminated, gamma)
        return adv, adv + values
    if kind == "return":
        ret = discounted_returns(rewards, next_values, terminated, dones, gamma)
        return ret, ret
    raise ValueError(f"unknown advantage estimator {kind!r}")


def normalize(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-batch standardization: mean 0, std 1."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)
