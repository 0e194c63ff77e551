"""Actor (policy pi_theta) and critic (value V_phi) as separate modules with separate parameter groups."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from trpo.spaces import ActionDistribution, Params

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp_body(in_dim: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    """Hidden layers only, orthogonally initialized with gain sqrt(2)."""
    layers: list[nn.Module] = []
    for size in hidden:
        linear = nn.Linear(in_dim, size)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """pi_theta(a|s): an MLP body and the distribution family's head, returning distribution params."""

    def __init__(
        self, obs_dim: int, dist: ActionDistribution, hidden: Sequence[int], activation: str, init_log_std: float
    ) -> None:
        super().__init__()
        self.body = mlp_body(obs_dim, hidden, activation)
        self.head = dist.make_head(hidden[-1] if hidden else obs_dim, init_log_std)

    def forward(self, obs: Tensor) -> Params:
        return self.head(self.body(obs))

    def numpy_policy(self) -> Callable[[np.ndarray], Params]:
        """A frozen CPU copy for per-step inference in rollouts: the same MLP as float32 numpy matmuls, which
        cost a few microseconds for a handful of envs where a torch forward costs tens. Returns params as
        torch tensors (for the distribution's sampler). Valid until the parameters change."""
        linears = [m for m in self.body if isinstance(m, nn.Linear)]
        act = {nn.Tanh: np.tanh, nn.ReLU: lambda h: np.maximum(h, 0.0)}[type(self.body[1])] if linears else None
        layers = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]
        out_linear = self.head.linear
        w_out = out_linear.weight.detach().cpu().numpy().T.copy()
        b_out = out_linear.bias.detach().cpu().numpy().copy()
        assemble = self.head.frozen_assembler()

        def policy(obs: np.ndarray) -> Params:
            h = obs
            for w, b in layers:
                h = act(h @ w + b)  # type: ignore[misc]
            return assemble(torch.from_numpy(h @ w_out + b_out))

        return policy


class Critic(nn.Module):
    """V_phi(s): an MLP with a scalar output."""

    def __init__(self, obs_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.body = mlp_body(obs_dim, hidden, activation)
        self.out = nn.Linear(hidden[-1] if hidden else obs_dim, 1)
        nn.init.orthogonal_(self.out.weight, gain=1.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, obs: Tensor) -> Tensor:
        return self.out(self.body(obs)).squeeze(-1)
