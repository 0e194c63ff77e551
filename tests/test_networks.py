"""The critic's written-out backward pass against autograd."""

from __future__ import annotations

import pytest
import torch

from trpo.networks import Critic


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("batch,obs_dim,hidden", [(128, 11, (64, 64)), (77, 3, (32,)), (512, 4, (16, 8, 24))])
def test_critic_mse_backward_equals_autograd_bit_for_bit(activation: str, batch: int, obs_dim: int,
                                                         hidden: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    critic = Critic(obs_dim, hidden, activation)
    with torch.no_grad():  # biases away from their zero init, so that their gradients are exercised too
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, targets = torch.randn(batch, obs_dim), 5 * torch.randn(batch)
    (critic(obs) - targets).pow(2).mean().backward()
    expected = [p.grad.clone() for p in critic.parameters()]
    for p in critic.parameters():
        p.grad = None
    critic.mse_backward(obs, targets)
    for (name, p), g in zip(critic.named_parameters(), expected, strict=True):
        assert torch.equal(p.grad, g), name
