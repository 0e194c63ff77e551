"""K-FAC with sampled G factors (TRPOConfig.kfac_samples, trpo/kfac.py): the mean of many sampled G approaches the
exact G within the standard error of that mean (Gaussian and categorical heads, a tiny net), A stays exact; 0 samples,
or as many as the head has outputs, give the exact factors bit for bit and draw nothing; the policy step with samples
never accepts a KL above max_kl and a failed one leaves the parameters bit-identical; its beta comes from the exact
Fisher; a run is deterministic per seed; and the config refuses what it cannot use, in one line."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kfac import SPACES, check_kfac_step, flat, random_batch, tiny_actor

from trpo import TRPO, ConfigError, TRPOConfig
from trpo.kfac import ExactFisher, LayerwiseFisher, kfac
from trpo.trust_region import autograd_linearization, gauss_newton_fvp
from trpo.update_rules import TrustRegionRule

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("float64")]

HEAD_DIM = {"gaussian": 3, "categorical": 4}  # the outputs G's backward passes go through (a Gaussian's mean)


@pytest.mark.parametrize("name,samples", [("gaussian", 1), ("gaussian", 2), ("categorical", 1), ("categorical", 3)])
def test_the_sampled_g_is_unbiased(name: str, samples: int) -> None:
    dist, actor, obs_dim = tiny_actor(*SPACES[name])
    obs = torch.randn(6, obs_dim, generator=torch.Generator().manual_seed(1))
    exact = kfac(actor, dist, obs, 0.1)
    gen = torch.Generator().manual_seed(2)
    draws, threads = 400, torch.get_num_threads()
    gs = []
    torch.set_num_threads(1)  # tiny matrices: more threads only wait on each other (seconds on a busy machine)
    try:
        for _ in range(draws):
            blocks = kfac(actor, dist, obs, 0.1, samples, gen)
            assert all(torch.equal(s.a, e.a) for s, e in zip(blocks.kron, exact.kron, strict=True))  # A is exact
            gs.append(torch.cat([b.g.reshape(-1) for b in blocks.kron]))
    finally:
        torch.set_num_threads(threads)
    stacked = torch.stack(gs)
    target = torch.cat([b.g.reshape(-1) for b in exact.kron])
    # Each entry's mean over the draws lies within 5 standard errors of the exact G (the draws are independent).
    error = stacked.std(0) / math.sqrt(draws)
    assert ((stacked.mean(0) - target).abs() <= 5 * error + 1e-12).all()
    # The test can fail: its tolerance is far below the bias of a wrong scale (G sampled without the 1/sqrt(m)
    # would be m times too large; a single draw is far off).
    assert float((5 * error).norm()) < 0.2 * float(target.norm())
    assert float((stacked[0] - target).norm()) > float((5 * error).norm())


@pytest.mark.parametrize("name", ["gaussian", "categorical", "gsde", "image"])
def test_no_samples_or_as_many_as_the_head_has_give_the_exact_factors_and_draw_nothing(name: str) -> None:
    space, sde = SPACES["categorical" if name == "image" else name]
    dist, actor, obs_dim = tiny_actor(space, sde, image=name == "image")
    obs = torch.rand(5, obs_dim, generator=torch.Generator().manual_seed(0))
    today = kfac(actor, dist, obs, 0.1)
    assert isinstance(today.fisher, LayerwiseFisher)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    head = 3 if name in ("gaussian", "gsde") else 4
    for samples in (0, head, head + 5):
        blocks = kfac(actor, dist, obs, 0.1, samples, gen)
        assert isinstance(blocks.fisher, LayerwiseFisher)
        for got, want in zip(blocks.kron, today.kron, strict=True):
            assert torch.equal(got.a, want.a) and torch.equal(got.g, want.g)
        for got_e, want_e in zip(blocks.exact, today.exact, strict=True):
            assert torch.equal(got_e.matrices, want_e.matrices)
    assert torch.equal(gen.get_state(), state)
    sampled = kfac(actor, dist, obs, 0.1, head - 1, gen)
    assert not torch.equal(gen.get_state(), state)
    assert any(not torch.equal(s.g, t.g) for s, t in zip(sampled.kron, today.kron, strict=True))


def test_with_samples_beta_comes_from_the_exact_fisher() -> None:
    """The sampled g_ik are no exact columns: the product for beta falls back to ExactFisher, equal to the
    Gauss-Newton product of the exact Fisher."""
    dist, actor, obs_dim = tiny_actor(*SPACES["gaussian"])
    obs = torch.rand(7, obs_dim, generator=torch.Generator().manual_seed(3))
    blocks = kfac(actor, dist, obs, 0.1, 1, torch.Generator().manual_seed(0))
    assert isinstance(blocks.fisher, ExactFisher)
    theta, params_fn = flat(actor)
    exact = gauss_newton_fvp(autograd_linearization(lambda th: params_fn(th, obs), theta),
                             dist.fisher_metric_product, 0.1)
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(blocks.fisher.product(v), exact(v), rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["categorical", "gaussian", "gsde", "image"]),
       natural_gradient=st.sampled_from(["kfac", "kfac_cg"]), samples=st.integers(1, 3),
       hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3), activation=st.sampled_from(["tanh", "relu"]),
       n=st.integers(2, 40), max_kl=st.floats(1e-4, 0.5), damping=st.floats(1e-3, 1.0), seed=st.integers(0, 2**16))
def test_the_sampled_kfac_step_never_accepts_a_kl_above_max_kl(kind: str, natural_gradient: str, samples: int,
                                                                hidden: list[int], activation: str, n: int,
                                                                max_kl: float, damping: float, seed: int) -> None:
    check_kfac_step(kind, natural_gradient, hidden, activation, n, max_kl, damping, seed, samples)


@pytest.mark.parametrize("natural_gradient", ["kfac", "kfac_cg"])
def test_a_failed_sampled_kfac_step_leaves_the_parameters_bit_identical(monkeypatch, natural_gradient: str) -> None:
    dist, actor, obs_dim = tiny_actor(*SPACES["gaussian"])
    batch = random_batch(dist, actor, obs_dim, 32, 0)
    exact_kl = dist.kl
    monkeypatch.setattr(dist, "kl", lambda old, new: exact_kl(old, new) + 1.0)  # every candidate fails
    before = [p.detach().clone() for p in actor.parameters()]
    cfg = TRPOConfig(natural_gradient=natural_gradient, kfac_samples=1, max_backtracks=3)
    stats = TrustRegionRule(cfg, dist, torch.Generator().manual_seed(0)).update(actor, batch)
    assert not stats["step_accepted"] and stats["step_status"] == "line_search_failed"
    assert all(torch.equal(a, b) for a, b in zip(before, actor.parameters(), strict=True))


def test_the_rules_step_with_samples_follows_its_generator() -> None:
    dist, actor, obs_dim = tiny_actor(*SPACES["gaussian"])
    batch = random_batch(dist, actor, obs_dim, 16, 0)
    start = {k: v.clone() for k, v in actor.state_dict().items()}
    cfg = TRPOConfig(natural_gradient="kfac", kfac_samples=1)
    thetas = []
    for seed in (0, 0, 1):
        actor.load_state_dict(start)
        TrustRegionRule(cfg, dist, torch.Generator().manual_seed(seed)).update(actor, batch)
        thetas.append(torch.cat([p.detach().reshape(-1) for p in actor.parameters()]))
    assert torch.equal(thetas[0], thetas[1]) and not torch.equal(thetas[0], thetas[2])


def rows(**overrides: object) -> list[dict]:
    agent = TRPO("Hopper-v5", seed=0, steps_per_env=64, **overrides)
    agent.learn(2 * agent.config.batch_size)
    out = [{k: v for k, v in r.items() if not k.startswith("time") and k != "fps"} for r in agent.history]
    agent.close()
    return out


def test_a_sampled_kfac_run_is_deterministic_per_seed() -> None:
    pytest.importorskip("mujoco")
    torch.set_default_dtype(torch.float32)  # the agent's usual dtype (the module's fixture set float64)
    first, second = rows(natural_gradient="kfac", kfac_samples=1), rows(natural_gradient="kfac", kfac_samples=1)
    assert first == second
    assert first != rows(natural_gradient="kfac")  # Hopper's head has 3 outputs: one sample is an estimate


def test_kfac_samples_is_validated_in_one_line() -> None:
    for values, match in (({"natural_gradient": "kfac", "kfac_samples": -1}, "kfac_samples must be >= 0"),
                          ({"kfac_samples": 2}, "needs natural_gradient 'kfac' or 'kfac_cg'")):
        with pytest.raises(ConfigError, match=match) as info:
            TRPOConfig(**values)
        assert "\n" not in str(info.value)
    assert TRPOConfig(natural_gradient="kfac_cg", kfac_samples=4).kfac_samples == 4
    assert TRPOConfig.from_dict({"natural_gradient": "kfac", "kfac_samples": 2}).kfac_samples == 2
    assert TRPOConfig().kfac_samples == 0
