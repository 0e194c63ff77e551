"""trpo's Adam against torch.optim.Adam(fused=True): the same parameters bit for bit, interchangeable state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trpo.optim import Adam


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    twin = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    twin.load_state_dict(net.state_dict())
    return net, twin


def _train(net: nn.Module, opt: object, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 5, generator=gen), torch.randn(32, 1, generator=gen)
        opt.zero_grad()  # type: ignore[attr-defined]
        (net(x) - y).pow(2).mean().backward()
        opt.step()  # type: ignore[attr-defined]


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.numerics
def test_adam_matches_torch_fused_adam_bit_for_bit() -> None:
    net, twin = _pair()
    _train(net, Adam(net.parameters(), lr=3e-3), 25, seed=1)
    _train(twin, torch.optim.Adam(twin.parameters(), lr=3e-3, fused=True), 25, seed=1)
    assert _same(net, twin)
    assert not _same(net, _pair()[0])  # it did train


@pytest.mark.numerics
def test_state_dicts_are_interchangeable_with_torch_adam() -> None:
    net, twin = _pair()
    ours, theirs = Adam(net.parameters(), lr=1e-3), torch.optim.Adam(twin.parameters(), lr=1e-3, fused=True)
    _train(net, ours, 5, seed=2)
    _train(twin, theirs, 5, seed=2)
    # Swap the states across implementations, then keep training: still identical.
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    ours2, theirs2 = Adam(net.parameters(), lr=0.5), torch.optim.Adam(twin.parameters(), lr=0.5, fused=True)
    ours2.load_state_dict(theirs_state)
    theirs2.load_state_dict(ours_state)
    assert ours2.lr == 1e-3
    _train(net, ours2, 5, seed=3)
    _train(twin, theirs2, 5, seed=3)
    assert _same(net, twin)


def test_parameters_without_gradients_are_left_alone() -> None:
    net, _ = _pair()
    first = net[0].weight.detach().clone()
    net[0].weight.requires_grad_(False)
    opt = Adam(net.parameters(), lr=1e-2)
    _train(net, opt, 3, seed=4)
    assert torch.equal(net[0].weight, first)
    assert 0 not in opt.state_dict()["state"] and 2 in opt.state_dict()["state"]


def test_value_eps_reaches_the_critics_adam_and_survives_a_checkpoint(tmp_path) -> None:
    from trpo import TRPO

    net, twin = _pair()
    ours, theirs = Adam(net.parameters(), lr=1e-3, eps=1e-5), torch.optim.Adam(twin.parameters(), lr=1e-3, eps=1e-5,
                                                                               fused=True)
    _train(net, ours, 20, seed=3)
    _train(twin, theirs, 20, seed=3)
    assert _same(net, twin)  # eps as torch applies it
    agent = TRPO("Pendulum-v1", value_eps=1e-5, num_envs=1, steps_per_env=64, value_epochs=1)
    assert agent.critic_optimizer.eps == 1e-5
    agent.learn(64)
    agent.save(tmp_path / "a.pt")
    assert TRPO.load(tmp_path / "a.pt").critic_optimizer.eps == 1e-5
    assert TRPO("Swimmer-v5", num_envs=1).critic_optimizer.eps == 1e-5  # the Swimmer preset's (sb3's) epsilon
