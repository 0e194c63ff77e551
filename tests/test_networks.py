"""The critic's written-out backward pass (feed-forward and through time) against autograd."""

from __future__ import annotations

import pytest
import torch

from trpo.encoders import CELLS, RecurrentCell
from trpo.networks import Critic
from trpo.sequences import Sequences

# Floats through kernels that numpy and torch pick per CPU: scripts/dev.py test runs these again with others forced.
pytestmark = pytest.mark.numerics


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


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("steps,length,hidden,cell", [(37, 8, (16, 8), 6), (200, 32, (64, 64), 64)])
def test_recurrent_critic_mse_backward_equals_autograd_bit_for_bit(kind: str, activation: str, steps: int, length: int,
                                                                   hidden: tuple[int, ...], cell: int) -> None:
    """Backpropagation through time written out (encoders.unroll_backward) against autograd through `unroll`, on a
    minibatch of sequences with episode starts inside them and a padded last chunk."""
    torch.manual_seed(0)
    critic = Critic(5, hidden, activation, recurrent=kind, recurrent_hidden=cell)
    assert critic.cell is not None
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    envs = 3
    starts = torch.rand(steps, envs) < 0.1
    seq, _ = Sequences.of(torch.randn(steps, envs, 5), starts, torch.randn(steps, envs, critic.cell.state_dim), length)
    last = seq.size - 1  # a padded chunk (steps is not a multiple of length)
    part, rows = seq.subset(torch.tensor([last, 0, 4, 2]))
    assert not bool(part.valid.all()) and bool(part.starts.any())
    targets = 3 * torch.randn(steps * envs)[rows]
    (critic(part) - targets).pow(2).mean().backward()
    expected = [p.grad.clone() for p in critic.parameters()]
    for p in critic.parameters():
        p.grad = None
    critic.mse_backward(part, targets)
    for (name, p), g in zip(critic.named_parameters(), expected, strict=True):
        assert torch.equal(p.grad, g), name


class _TanhCell(RecurrentCell):
    """A plain RNN cell, h' = tanh(W x + U h + b), with `step` only: a new kind as a user would add one."""

    gates = 1

    def step(self, wx: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(wx + self.recur(state))
        return h, h


def test_a_new_cell_kind_is_one_class_and_a_registry_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell with `step` alone, registered in CELLS, runs in a critic, which is fitted through autograd (to be
    chosen by `recurrent`, a kind also needs its name in config.Recurrent: test_recurrent holds the two together)."""
    monkeypatch.setitem(CELLS, "rnn", _TanhCell)
    torch.manual_seed(0)
    critic = Critic(5, (8,), "tanh", recurrent="rnn", recurrent_hidden=6)
    seq, _ = Sequences.of(torch.randn(20, 2, 5), torch.rand(20, 2) < 0.1, torch.randn(20, 2, 6), 8)
    targets = torch.randn(40)
    (critic(seq) - targets).pow(2).mean().backward()
    expected = [p.grad.clone() for p in critic.parameters()]
    critic.mse_backward(seq, targets)
    assert all(torch.equal(p.grad, g) for p, g in zip(critic.parameters(), expected, strict=True))
