"""GAE and the other estimators against values computed by hand; truncation vs termination."""

from __future__ import annotations

import pytest
import torch

from trpo.advantages import discounted_returns, estimate, gae, normalize, td_residuals

# Floats through kernels that numpy and torch pick per CPU: scripts/dev.py test runs these again with others forced.
pytestmark = pytest.mark.numerics


def col(*xs: float) -> torch.Tensor:
    """A [T, 1] column (one env)."""
    return torch.tensor(xs, dtype=torch.float64).unsqueeze(1)


def flags(*xs: bool) -> torch.Tensor:
    return torch.tensor(xs).unsqueeze(1)


GAMMA, LAM = 0.9, 0.8


def test_gae_hand_computed_single_episode_with_bootstrap_at_batch_end() -> None:
    r, v, nv = col(1, 2, 3), col(0.5, 1.0, 1.5), col(1.0, 1.5, 2.0)
    no = flags(False, False, False)
    d0 = 1 + 0.9 * 1.0 - 0.5  # 1.4
    d1 = 2 + 0.9 * 1.5 - 1.0  # 2.35
    d2 = 3 + 0.9 * 2.0 - 1.5  # 3.3 (bootstraps V(s_3) = 2.0: the batch ended, the episode did not)
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    got = gae(r, v, nv, no, no, GAMMA, LAM)
    torch.testing.assert_close(got, col(a0, a1, a2))


def test_termination_cuts_the_bootstrap_and_truncation_keeps_it() -> None:
    r, v = col(1, 1, 1), col(0.0, 0.0, 0.0)
    nv = col(0.0, 5.0, 0.0)  # V(final obs of the episode ending at t=1) = 5
    ended = flags(False, True, False)
    not_ended = flags(False, False, False)
    terminated = gae(r, v, nv, ended, ended, GAMMA, LAM)
    truncated = gae(r, v, nv, not_ended, ended, GAMMA, LAM)
    # t=1 terminated: delta = 1 (no bootstrap); truncated: delta = 1 + 0.9 * 5 = 5.5.
    assert float(terminated[1]) == pytest.approx(1.0)
    assert float(truncated[1]) == pytest.approx(5.5)
    # t=0 accumulates from t=1 in both (same episode); t=2 starts a new episode and does not leak back.
    assert float(terminated[0]) == pytest.approx(1 + 0.72 * 1.0)
    assert float(truncated[0]) == pytest.approx(1 + 0.72 * 5.5)
    assert float(terminated[2]) == float(truncated[2]) == pytest.approx(1.0)


def test_envs_are_independent_columns() -> None:
    r = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v, nv = torch.zeros(2, 2), torch.zeros(2, 2)
    no = torch.zeros(2, 2, dtype=torch.bool)
    got = gae(r, v, nv, no, no, 1.0, 1.0)
    torch.testing.assert_close(got, torch.tensor([[2.0, 0.0], [1.0, 0.0]]))


def test_discounted_returns_hand_computed() -> None:
    r = col(1, 2, 3, 4)
    nv = col(9.0, 9.0, 7.0, 6.0)
    term = flags(False, True, False, False)
    got = discounted_returns(r, nv, term, term, GAMMA)
    # Episode 1: t=1 terminates -> G1 = 2, G0 = 1 + 0.9*2. Episode 2: bootstrap V = 6 at the batch end.
    g3 = 4 + 0.9 * 6
    torch.testing.assert_close(got, col(1 + 0.9 * 2, 2, 3 + 0.9 * g3, g3))


def test_gae_lambda_one_plus_baseline_is_the_bootstrapped_return() -> None:
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    nv = torch.cat([v[1:], torch.randn(1, 3, generator=gen)])
    term = torch.zeros(12, 3, dtype=torch.bool)
    term[4, 0] = True
    trunc = torch.zeros(12, 3, dtype=torch.bool)
    trunc[7, 1] = True
    nv[4, 0], nv[7, 1] = 0.3, -2.0  # values of true final observations
    adv = gae(r, v, nv, term, term | trunc, 0.97, 1.0)
    ret = discounted_returns(r, nv, term, term | trunc, 0.97)
    torch.testing.assert_close(adv + v, ret)


def test_gae_lambda_zero_is_the_td_residual() -> None:
    gen = torch.Generator().manual_seed(1)
    r, v, nv = (torch.randn(6, 2, generator=gen) for _ in range(3))
    term = torch.zeros(6, 2, dtype=torch.bool)
    term[2, 1] = True
    torch.testing.assert_close(gae(r, v, nv, term, term, 0.9, 0.0), td_residuals(r, v, nv, term, 0.9))


def test_estimate_targets() -> None:
    r, v, nv = col(1, 1), col(0.5, 0.5), col(0.5, 2.0)
    no = flags(False, False)
    adv, targets = estimate("td", r, v, nv, no, no, 0.5, 0.9)
    torch.testing.assert_close(targets, col(1.25, 2.0))
    adv, targets = estimate("return", r, v, nv, no, no, 0.5, 0.9)
    torch.testing.assert_close(adv, targets)
    torch.testing.assert_close(targets, col(1 + 0.5 * 2.0, 2.0))
    with pytest.raises(ValueError):
        estimate("bogus", r, v, nv, no, no, 0.5, 0.9)


def test_normalize() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    y = normalize(x)
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-7)
    assert float(y.std()) == pytest.approx(1.0, abs=1e-6)
