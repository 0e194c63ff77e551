"""Advantage estimators as pure functions of [T, N] tensors (time-major, one column per env).

Conventions shared by every function:
- `next_values[t]` is V(s_{t+1}) of the *true* next observation: at a time-limit truncation it is the value of
  the final observation the env returned (not of the reset observation), so truncations bootstrap.
- `terminated[t]`: s_{t+1} is terminal, its value is 0 (no bootstrap).
- `dones[t]` = terminated or truncated: the recursion stops there; the last row of the batch also stops it
  (bootstrapping from next_values[T-1]).
"""

from __future__ import annotations

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
    cont = _continues(dones).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * cont[t] * running
        advantages[t] = running
    return advantages


def discounted_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, dones: Tensor, gamma: float
) -> Tensor:
    """G_t = r_t + gamma * G_{t+1} within an episode; bootstraps from V(s_{t+1}) at a truncation or the batch
    end, and from 0 at a termination."""
    cont = _continues(dones).to(rewards.dtype)
    alive = (~terminated).to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        tail = cont[t] * following + (1 - cont[t]) * next_values[t]
        following = rewards[t] + gamma * alive[t] * tail
        returns[t] = following
    return returns


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
