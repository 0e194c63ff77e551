"""State-dependent exploration (gSDE, Raffin et al. 2021; config use_sde, sde_sample_freq): the distribution against
torch.distributions, sampling against the exploration matrix it claims, the Fisher-vector product against
torch.func.hessian, the resampling schedule, and runs in every mode, with vine and with recurrent policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.func import hessian

from trpo import TRPO
from trpo.config import ConfigError, TRPOConfig
from trpo.distributions import make_distribution
from trpo.networks import Actor
from trpo.normalization import ObsNormalizer
from trpo.policy import snapshot
from trpo.sequences import Sequences
from trpo.trust_region import autograd_linearization, gauss_newton_fvp, hessian_fvp
from trpo.update_rules import flat_parameters

BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)
SMALL = TRPOConfig(num_envs=2, steps_per_env=64, actor_hidden=(8,), critic_hidden=(8,), use_sde=True,
                   sde_sample_freq=4, cg_iters=5, value_epochs=2, eval_episodes=1, init_log_std=-1.0)


def sde_actor(seed: int = 0, recurrent: str = "none") -> tuple[Actor, object]:
    torch.manual_seed(seed)
    dist = make_distribution(BOX, use_sde=True)
    actor = Actor(3, dist, (5,), "tanh", init_log_std=-0.5, recurrent=recurrent, recurrent_hidden=4)
    for p in actor.parameters():  # away from the init, so that every entry matters
        p.data.add_(0.3 * torch.randn_like(p))
    return actor, dist


def test_the_distribution_is_the_gaussian_of_the_exploration_matrix() -> None:
    """params = (mean, log std) with var = (z^2) @ sigma^2 (+ 1e-6): log-prob, entropy and KL equal
    torch.distributions.Normal's with that std."""
    actor, dist = sde_actor()
    obs = torch.randn(7, 3)
    z = actor.body(obs)
    sigma = actor.head.log_std.exp()
    std = ((z**2) @ sigma**2 + 1e-6).sqrt()
    mean, log_std = actor(obs)
    torch.testing.assert_close(log_std.exp(), std)
    ref = torch.distributions.Normal(mean, std)
    actions = torch.randn(7, 2)
    torch.testing.assert_close(dist.log_prob((mean, log_std), actions), ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(dist.entropy((mean, log_std)), ref.entropy().sum(-1))
    other, _ = sde_actor(seed=1)
    p2 = other(obs)
    ref2 = torch.distributions.Normal(p2[0], p2[1].exp())
    torch.testing.assert_close(dist.kl((mean, log_std), p2), torch.distributions.kl_divergence(ref, ref2).sum(-1))


def test_samples_are_the_mean_plus_the_features_times_the_exploration_matrix() -> None:
    """a = mu(s) + z(s) @ (sigma * eps): linear in eps with covariance diag((z^2) @ sigma^2), the distribution's
    own variance (up to its 1e-6)."""
    actor, dist = sde_actor()
    acting = snapshot(actor, dist, ObsNormalizer(3, False, 10.0).frozen())
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    eps = torch.randn(4, *actor.noise_shape, generator=torch.Generator().manual_seed(1))
    actions, _ = acting.act(obs, None, np.zeros(4, bool), eps.numpy())
    with torch.no_grad():
        x = torch.from_numpy(obs)
        z, (mean, log_std) = actor.body(x), actor(x)
        expected = mean + torch.einsum("bi,bia->ba", z, actor.head.log_std.exp() * eps)
    np.testing.assert_allclose(actions, expected.numpy(), rtol=1e-5, atol=1e-6)
    many = torch.randn(20000, *actor.noise_shape, generator=torch.Generator().manual_seed(2))
    samples = torch.einsum("i,bia->ba", z[0], actor.head.log_std.exp() * many)
    torch.testing.assert_close(samples.var(0), (log_std[0].exp() ** 2 - 1e-6), rtol=0.05, atol=0.0)
    # No noise: the mean (numpy's matmuls against torch's: float32 rounding apart).
    np.testing.assert_allclose(acting.act(obs, None, np.zeros(4, bool), None)[0], mean.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recurrent", ["none", "gru"])
@pytest.mark.parametrize("form", ["gauss_newton", "hessian"])
def test_fisher_vector_product_equals_the_hessian_of_the_mean_kl(recurrent: str, form: str) -> None:
    actor, dist = sde_actor(recurrent=recurrent)
    if recurrent == "none":
        inputs = torch.randn(9, 3)
    else:
        gen = torch.Generator().manual_seed(0)
        inputs, _ = Sequences.of(torch.randn(6, 2, 3, generator=gen), torch.rand(6, 2, generator=gen) < 0.3,
                                 torch.randn(6, 2, actor.cell.state_dim, generator=gen), 4)
    theta_old, params_of = flat_parameters(actor)
    old = tuple(p.detach() for p in actor(inputs))

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        return dist.kl(old, params_of(theta, inputs)).mean()

    h = hessian(mean_kl)(theta_old)
    if form == "hessian":
        fvp = hessian_fvp(mean_kl, theta_old, 0.01)
    else:
        fvp = gauss_newton_fvp(autograd_linearization(lambda th: params_of(th, inputs), theta_old),
                               dist.fisher_metric_product, 0.01)
    for seed in range(3):
        v = torch.randn(theta_old.shape, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fvp(v), h @ v + 0.01 * v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("freq", [4, -1])
def test_the_exploration_matrix_is_resampled_every_sde_sample_freq_steps(freq: int) -> None:
    """The batch's actions are mu(s_t) + z(s_t) @ (sigma * eps_{t // freq}) per env, with the matrices drawn from the
    run's generator (one per env for the whole batch with freq -1)."""
    agent = TRPO("Pendulum-v1", config=SMALL.replace(sde_sample_freq=freq, num_envs=3), seed=2)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(agent.sample_gen.get_state())
    batch = agent.learner.collector_or_new().collect(agent.actor, 10, agent.sample_gen)
    periods = 1 if freq == -1 else math.ceil(10 / freq)
    eps = agent.dist.noise((periods, 3, *agent.actor.noise_shape), gen)
    with torch.no_grad():
        z, mean = agent.actor.body(batch.obs), agent.actor(batch.obs.reshape(30, 3))[0].reshape(10, 3, 1)
    sigma = agent.actor.head.log_std.exp()
    for t in range(10):
        matrix = sigma * eps[0 if freq == -1 else t // freq]  # [3 envs, latent, 1]
        expected = mean[t] + torch.einsum("bi,bia->ba", z[t], matrix)
        torch.testing.assert_close(batch.actions[t], expected, rtol=1e-5, atol=1e-6)
    agent.close()


def test_sde_runs_alike_in_every_mode_with_vine_and_recurrent_policies(tmp_path) -> None:
    for extra in ({}, {"sampling": "vine", "vine_states": 4}, {"recurrent": "lstm", "recurrent_hidden": 6}):
        histories = []
        for mode in ("sync", "subprocess"):
            agent = TRPO("Pendulum-v1", config=SMALL.replace(vector_mode=mode, num_workers=2, **extra), seed=1)
            agent.learn(256)
            histories.append([{k: v for k, v in r.items() if not k.startswith(("time_", "fps"))}
                              for r in agent.history])
            agent.save(tmp_path / "a.pt")
            loaded = TRPO.load(tmp_path / "a.pt")
            obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
            np.testing.assert_array_equal(agent.predict(obs)[0], loaded.predict(obs)[0])
            a1 = agent.predict(obs, deterministic=False)[0]
            assert not np.array_equal(a1, agent.predict(obs, deterministic=False)[0])
            agent.close()
            loaded.close()
        assert histories[0] == histories[1], extra
        assert all(np.isfinite(r["kl"]) for r in histories[0])


def test_sde_needs_box_actions_and_a_valid_sample_freq() -> None:
    with pytest.raises(ConfigError, match=r"^use_sde \(state-dependent exploration\) is for Box action spaces"):
        TRPO("CartPole-v1", config=TRPOConfig(use_sde=True))
    for bad in (0, -2):
        with pytest.raises(ConfigError, match="sde_sample_freq must be -1"):
            TRPOConfig(use_sde=True, sde_sample_freq=bad)
