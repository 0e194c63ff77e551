"""Shared actor-critic trunks (`shared_trunk`): one body and cell for pi and V, and a trust region that holds for the
whole update. Properties over random nets, batches and value fits (however far the fit moves the trunk): after
`recheck_trust_region` the exact KL(pi_old || pi), measured afresh through the actor, is at most max_kl and the
surrogate is not below min(pi_old's, the step's); where nothing passes, the parameters are the policy step's bit for
bit. End to end: MLP, CNN and recurrent bodies train with the figures logged every update, the sharing survives
save, load and resume (and the CLI), a mismatched critic_hidden is refused, and CartPole learns on 3 seeds."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils import parameters_to_vector
from trpo_testenvs import PixelSideEnv

from trpo import TRPO, ConfigError, TRPOConfig
from trpo.distributions import make_distribution
from trpo.networks import Actor, Critic
from trpo.optim import Adam
from trpo.shared_trunk import recheck_trust_region
from trpo.trust_region import keep_trust_region
from trpo.update_rules import PolicyBatch, TrustRegionRule

SPACES = {
    "categorical": (spaces.Discrete(4), False),
    "gaussian": (spaces.Box(-1.0, 1.0, (3,)), False),
    "gsde": (spaces.Box(-1.0, 1.0, (2,)), True),
    "multicategorical": (spaces.MultiDiscrete([3, 2]), False),
    "bernoulli": (spaces.MultiBinary(3), False),
}


def shared_nets(kind: str, hidden: tuple[int, ...], seed: int):
    torch.manual_seed(seed)
    space, sde = SPACES[kind]
    dist = make_distribution(space, sde)
    actor = Actor(5, dist, hidden, "tanh", init_log_std=-0.5)
    critic = Critic(5, hidden, "tanh", trunk=actor)
    return dist, actor, critic


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SPACES)), hidden=st.sampled_from([(8,), (6, 4), (16, 16)]),
       seed=st.integers(0, 2**16), n=st.integers(16, 96), value_lr=st.sampled_from([1e-3, 3e-2, 0.3]),
       max_kl=st.sampled_from([1e-3, 1e-2, 0.1]), constraint=st.sampled_from(["mean", "max"]))
def test_whole_update_stays_in_the_trust_region(kind, hidden, seed, n, value_lr, max_kl, constraint) -> None:
    dist, actor, critic = shared_nets(kind, hidden, seed)
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 5, generator=gen) * 2
    with torch.no_grad():
        params = actor(obs)
        actions = dist.sample(params, gen)
    batch = PolicyBatch.of(actor, obs, actions, dist.log_prob(params, actions).detach(), torch.randn(n, generator=gen))
    pi_old = copy.deepcopy(actor)
    cfg = TRPOConfig(max_kl=max_kl, kl_constraint=constraint, shared_trunk=True)
    TrustRegionRule(cfg, dist).update(actor, batch)
    theta_policy = parameters_to_vector(actor.parameters()).detach().clone()
    optimizer = Adam(critic.parameters(), lr=value_lr)
    targets = torch.randn(n, generator=gen) * 10  # a fit that pulls the trunk hard and anywhere
    for _ in range(20):
        critic.mse_backward(obs, targets)
        optimizer.step()
    assert not torch.equal(parameters_to_vector(actor.parameters()), theta_policy), "the fit must move the trunk"
    figures = recheck_trust_region(actor, dist, batch, theta_policy, cfg)

    with torch.no_grad():  # measured afresh, by the modules, not by the function under test
        per_state = dist.kl(pi_old(obs), actor(obs))
        kl = float(per_state.max() if constraint == "max" else per_state.mean())
        new_surrogate = float(batch.surrogate(dist.log_prob(actor(obs), actions)))
    if figures["value_fit_trunk_fraction"] == 0.0:
        assert torch.equal(parameters_to_vector(actor.parameters()), theta_policy)
    else:
        assert kl <= max_kl
        assert figures["kl_after_value_fit"] == kl
        old_surrogate = float(batch.surrogate(batch.old_log_probs))
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta_policy, (probe := copy.deepcopy(actor)).parameters())
            step_surrogate = float(batch.surrogate(dist.log_prob(probe(obs), actions)))
        assert new_surrogate >= min(old_surrogate, step_surrogate)
    assert math.isfinite(figures["kl_after_value_fit"])


def test_keep_trust_region_takes_the_first_passing_share_or_undoes() -> None:
    theta_policy, theta_fitted = torch.zeros(3), torch.tensor([1.0, -2.0, 4.0])

    def evaluate(theta: torch.Tensor) -> tuple[float, float]:  # KL grows with the distance; the surrogate falls
        d = float(theta.norm())
        return d * d, -d

    kept = keep_trust_region(evaluate, theta_policy, theta_fitted, max_kl=1.0, floor=-10.0, ratio=0.5,
                             max_backtracks=10)
    assert kept.fraction == 0.125 and kept.backtracks == 3  # |0.125 * theta_fitted| = 0.573, |0.25 ...| = 1.15
    assert torch.equal(kept.theta, theta_policy + 0.125 * (theta_fitted - theta_policy))
    undone = keep_trust_region(evaluate, theta_policy, theta_fitted, max_kl=1.0, floor=0.5, ratio=0.5,
                               max_backtracks=10)  # no share keeps the surrogate at 0.5
    assert undone.fraction == 0.0 and undone.theta is theta_policy and math.isnan(undone.kl)


def _run(env: str, steps: int, **kw) -> TRPO:
    agent = TRPO(env, seed=0, num_envs=2, steps_per_env=64, shared_trunk=True, **kw)
    agent.learn(steps)
    return agent


@pytest.mark.parametrize("env,kw", [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {"value_kl_coef": 0.0}),
    ("CartPole-v1", {"recurrent": "gru", "recurrent_seq_len": 8}),
    (PixelSideEnv, {}),
    ("CartPole-v1", {"update_rule": "ppo"}),
    ("CartPole-v1", {"natural_gradient": "kfac"}),
    ("Pendulum-v1", {"update_rule": "npg", "kl_constraint": "max"}),  # no line search; the max KL bounded
])
def test_bodies_and_rules_log_the_recheck_every_update(env, kw) -> None:
    agent = _run(env, 512, **kw)
    assert agent.learner.critic.body is agent.learner.actor.body
    assert agent.learner.critic.cell is agent.learner.actor.cell
    assert len(agent.history) == 4
    for row in agent.history:
        assert 0.0 <= row["value_fit_trunk_fraction"] <= 1.0
        if row["value_fit_trunk_fraction"] > 0:
            step_kl = row["kl_max" if agent.config.kl_constraint == "max" else "kl"]
            assert row["kl_after_value_fit"] <= max(agent.config.max_kl, step_kl)


def test_separate_networks_log_no_recheck() -> None:
    agent = TRPO("CartPole-v1", seed=0, num_envs=2, steps_per_env=64)
    agent.learn(128)
    assert agent.learner.critic.body is not agent.learner.actor.body
    assert "kl_after_value_fit" not in agent.history[-1]


def test_sharing_survives_save_load_and_resume(tmp_path) -> None:
    agent = _run("CartPole-v1", 256)
    agent.save(tmp_path / "m.pt")
    loaded = TRPO.load(tmp_path / "m.pt")
    assert loaded.learner.critic.body is loaded.learner.actor.body
    for name, p in agent.learner.actor.state_dict().items():
        assert torch.equal(p, loaded.learner.actor.state_dict()[name])
    loaded.learn(256)  # trains on; the shared body still one module
    assert loaded.learner.critic.body is loaded.learner.actor.body


def test_cli_trains_checkpoints_and_resumes(tmp_path) -> None:
    from trpo.cli import main

    out = tmp_path / "run"
    main(["train", "--env", "CartPole-v1", "--shared-trunk", "--total-steps", "512", "--num-envs", "2",
          "--steps-per-env", "64", "--save-every", "256", "--run-dir", str(out), "--seed", "1"])
    assert (out / "checkpoints" / "latest.pt").exists()
    main(["train", "--resume", str(out), "--total-steps", "768"])
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 6 and all('"kl_after_value_fit"' in r for r in rows)


def test_a_critic_of_other_sizes_is_refused() -> None:
    with pytest.raises(ConfigError, match="critic_hidden must equal actor_hidden"):
        TRPO("CartPole-v1", shared_trunk=True, critic_hidden=(32,))
    with pytest.raises(ConfigError, match="value_kl_coef"):
        TRPO("CartPole-v1", shared_trunk=True, value_kl_coef=-1.0)
    with pytest.raises(ConfigError, match="needs shared_trunk true"):
        TRPO("CartPole-v1", value_fit_trunk=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_learns_with_a_shared_trunk(seed) -> None:
    agent = TRPO("CartPole-v1", seed=seed, num_envs=4, steps_per_env=512, shared_trunk=True)
    agent.learn(40_000)
    assert agent.evaluate(5)["mean_return"] >= 150


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_the_kl_term_keeps_the_policy_where_the_step_left_it(kind) -> None:
    """The same fit of the same shared nets moves the policy less with the cloning term than without it, and
    still fits V (objectives.shared_value_loss through Critic.penalized_backward)."""
    moved, losses = {}, {}
    for coef in (0.0, 3.0):
        dist, actor, critic = shared_nets(kind, (16, 16), seed=3)
        for p in actor.head.parameters():  # away from the near-uniform init, where features barely matter
            p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
        gen = torch.Generator().manual_seed(3)
        obs, targets = torch.randn(64, 5, generator=gen), torch.randn(64, generator=gen) * 5
        with torch.no_grad():
            ref = actor(obs)
            before = float((critic(obs) - targets).pow(2).mean() / targets.var())
        optimizer = Adam(critic.parameters(), lr=1e-2)
        for _ in range(30):
            critic.penalized_backward(actor, dist, obs, targets, targets.var(), ref, 0.01, coef)
            optimizer.step()
        with torch.no_grad():
            moved[coef] = float(dist.kl(ref, actor(obs)).mean())
            losses[coef] = float((critic(obs) - targets).pow(2).mean() / targets.var())
        assert losses[coef] < 0.97 * before  # V fits either way
    assert moved[3.0] < 0.01 * moved[0.0]  # 0.0004 against 1.1 (categorical), 0.14 against 96 (Gaussian)


@pytest.mark.parametrize("fits_trunk", [True, False])
def test_worker_processes_give_the_same_run(fits_trunk) -> None:
    """With a shared trunk the next batch is collected after the recheck, not during the value fit (during it where
    the fit keeps to the value head): worker processes must still give the rows envs stepped in this process give."""
    from trpo.logger import TIMING_FIELDS

    def rows(mode: str) -> list[dict]:
        agent = TRPO("CartPole-v1", seed=4, num_envs=4, steps_per_env=64, shared_trunk=True, vector_mode=mode,
                     value_fit_trunk=fits_trunk)
        agent.learn(768)
        agent.close()
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in agent.history]

    assert rows("subprocess") == rows("sync")


@pytest.mark.parametrize("env,kw", [
    ("CartPole-v1", {}),
    (PixelSideEnv, {}),
    ("CartPole-v1", {"recurrent": "gru", "recurrent_seq_len": 8}),
    ("Pendulum-v1", {"update_rule": "ppo", "kl_constraint": "max"}),
])
def test_a_trunk_kept_out_of_the_value_fit_leaves_the_policy_as_the_step_did(env, kw) -> None:
    """value_fit_trunk false (sb3-contrib's shared CNN): the fit trains the value head alone, so after each update
    the actor's parameters are the policy step's bit for bit, the logged KL after the fit is the step's, and the
    critic's Adam holds the head's tensors only."""
    agent = TRPO(env, seed=0, num_envs=2, steps_per_env=64, shared_trunk=True, value_fit_trunk=False, **kw)
    learner = agent.learner
    assert learner.critic.body is learner.actor.body
    assert len(learner.critic_optimizer.state_dict()["param_groups"][0]["params"]) == 2  # out.weight, out.bias
    after_step: list[torch.Tensor] = []
    rule_update = learner.update_rule.update

    def recorded(actor, batch):
        figures = rule_update(actor, batch)
        after_step.append(parameters_to_vector(actor.parameters()).clone())
        return figures

    learner.update_rule.update = recorded
    heads = []
    for _ in range(3):
        heads.append(parameters_to_vector(learner.critic.out.parameters()).clone())
        row = learner.update()
        assert torch.equal(parameters_to_vector(learner.actor.parameters()), after_step[-1])
        step_kl = row["kl_max" if agent.config.kl_constraint == "max" else "kl"]
        assert row["kl_after_value_fit"] == step_kl and row["value_fit_trunk_fraction"] == 0.0
    assert not torch.equal(heads[0], parameters_to_vector(learner.critic.out.parameters()))  # V was fitted


def test_the_value_heads_gradient_is_autograds() -> None:
    """Critic.head_mse_backward on fixed features: the value head's gradients of the squared error, as autograd
    gives them; the body gets none."""
    critic = shared_nets("gaussian", (16, 16), seed=5)[2]
    gen = torch.Generator().manual_seed(5)
    obs, targets = torch.randn(40, 5, generator=gen), torch.randn(40, generator=gen) * 3
    with torch.no_grad():
        features = critic.features(obs)
    critic.head_mse_backward(features, targets)
    written = [p.grad.clone() for p in critic.out.parameters()]
    assert all(p.grad is None for p in critic.body.parameters())
    critic.zero_grad(set_to_none=True)
    (critic.out(features).squeeze(-1) - targets).pow(2).mean().backward()
    for mine, theirs in zip(written, [p.grad for p in critic.out.parameters()], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)


def test_cli_keeps_the_trunk_out_of_the_value_fit(tmp_path) -> None:
    from trpo.cli import main

    out = tmp_path / "run"
    main(["train", "--env", "CartPole-v1", "--shared-trunk", "--no-value-fit-trunk", "--total-steps", "512",
          "--num-envs", "2", "--steps-per-env", "64", "--save-every", "256", "--run-dir", str(out), "--seed", "1"])
    main(["train", "--resume", str(out), "--total-steps", "768"])
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["value_fit_trunk_fraction"] == 0.0 for r in rows)
    assert "value_fit_trunk: false" in (out / "config.yaml").read_text()
