"""The update rules of the family (update_rules.py, objectives.py), each against an independent computation:
PPO's clipped objective and its gradient by hand, the adaptive beta, the theorem's C and eps, the penalty
objective's gradient at theta_old, the max-KL line search, kl_max >= kl, the held-out share, and every rule on
every supported space through the API and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trpo_testenvs  # noqa: F401 - registers the test envs
from test_agent import fresh_batch, update_with_independent_kl
from test_cli import FAST, metrics, trpo

from trpo import TRPO, TRPOConfig
from trpo import objectives as obj
from trpo.config import RULE_DEFAULTS
from trpo.update_rules import PolicyBatch, policy_stats

SMALL = TRPOConfig(num_envs=2, steps_per_env=128, value_epochs=2, value_minibatch=64)
RULES = ["trpo", "npg", "pg", "penalty", "ppo"]


def test_clipped_surrogate_and_its_gradient_by_hand() -> None:
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    old = torch.tensor([-0.3, -1.2, -0.7, -2.0, -0.1], dtype=torch.float64)
    log_probs = (old + ratios.log()).requires_grad_(True)
    value = obj.clipped_surrogate(log_probs, old, adv, clip_range=0.2)
    # Per sample, min(r A, clip(r, 0.8, 1.2) A): 1.2 (clipped), -1.5, 0.5, -0.8 (clipped), 2.2 (inside the range).
    assert float(value.detach()) == pytest.approx((1.2 - 1.5 + 0.5 - 0.8 + 2.2) / 5, abs=1e-12)
    (grad,) = torch.autograd.grad(value, log_probs)
    # d(r A)/d log pi = r A where the unclipped term is the smaller one; 0 where the clipped one is (flat).
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.5, 0.5, 0.0, 2.2], dtype=torch.float64) / 5)
    assert obj.clip_fraction(log_probs.detach(), old, 0.2) == pytest.approx(0.8)


def test_surrogate_and_penalties_by_hand() -> None:
    lp, old = torch.tensor([0.0, math.log(2.0)]), torch.tensor([0.0, 0.0])
    adv = torch.tensor([3.0, -1.0])
    assert float(obj.surrogate(lp, old, adv)) == pytest.approx((3.0 - 2.0) / 2)
    assert float(obj.penalized_surrogate(torch.tensor(0.5), torch.tensor(0.1), 2.0)) == pytest.approx(0.3)
    assert obj.theory_coefficient(2.0, 0.99) == pytest.approx(4 * 2.0 * 0.99 / 0.01**2)
    assert float(obj.theory_penalty_objective(torch.tensor(0.5), torch.tensor(1e-6), 79200.0, 0.99)) == \
        pytest.approx(0.5 / 0.01 - 0.0792)


@pytest.mark.parametrize("kl,expected", [(0.016, 2.0), (0.015, 1.0), (0.0151, 2.0), (0.01, 1.0), (0.0067, 1.0),
                                         (0.0066, 0.5), (0.0, 0.5)])
def test_adaptive_beta_doubles_above_and_halves_below_the_band(kl: float, expected: float) -> None:
    assert obj.adaptive_beta(1.0, kl, kl_target=0.01) == expected


def _batch(agent: TRPO) -> PolicyBatch:
    return PolicyBatch.of(agent.actor, *fresh_batch(agent))


def test_theory_penalty_uses_the_theorems_c_and_eps_and_takes_tiny_steps() -> None:
    agent = TRPO("Pendulum-v1", config=SMALL.replace(update_rule="penalty", kl_penalty="theory", gamma=0.95), seed=0)
    batch = _batch(agent)
    stats = agent.update_rule.update(agent.actor, batch)
    eps = float(batch.advantages.abs().max())  # independent: max |A| over the batch the rule saw
    assert stats["penalty_epsilon"] == pytest.approx(eps)
    assert stats["penalty_beta"] == pytest.approx(4 * eps * 0.95 / (1 - 0.95) ** 2)
    after = policy_stats(agent.actor, agent.dist, batch, None)
    assert 0 < after["kl_max"] < 1e-3 * SMALL.max_kl  # "very small, conservative updates"
    agent.close()


@pytest.mark.parametrize("kl_penalty", ["fixed", "theory"])
def test_penalty_objective_gradient_at_theta_old_is_the_policy_gradient(kl_penalty: str) -> None:
    agent = TRPO("Pendulum-v1", config=SMALL.replace(update_rule="penalty", kl_penalty=kl_penalty,
                                                     penalty_coef=5.0), seed=1)
    batch = _batch(agent)
    params = list(agent.actor.parameters())
    beta = 5.0 if kl_penalty == "fixed" else obj.theory_coefficient(float(batch.advantages.abs().max()), 0.99)
    penalized = agent.update_rule.objective(beta)(agent.actor(batch.obs), batch)
    g_pen = torch.cat([g.reshape(-1) for g in torch.autograd.grad(penalized, params)])
    surrogate = obj.surrogate(agent.dist.log_prob(agent.actor(batch.obs), batch.actions), batch.old_log_probs,
                              batch.advantages)
    g = torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, params)])
    if kl_penalty == "theory":
        g = g / (1 - 0.99)  # the theorem's units: L / (1 - gamma)
    # KL(pi_old || pi_theta) has its minimum, value 0 and gradient 0, at theta_old: only L's gradient is left.
    torch.testing.assert_close(g_pen, g, rtol=1e-5, atol=1e-6)
    assert float(g.norm()) > 1e-3
    agent.close()


def test_adaptive_penalty_updates_beta_from_the_measured_kl() -> None:
    agent = TRPO("CartPole-v1", config=SMALL.replace(update_rule="penalty", penalty_coef=1.0, kl_target=0.01), seed=0)
    agent.learn(1024)
    betas = [row["penalty_beta"] for row in agent.history]
    for row, beta, next_beta in zip(agent.history, betas, betas[1:], strict=False):
        assert next_beta == obj.adaptive_beta(beta, row["kl"], 0.01)
    assert len(set(betas)) > 1
    agent.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_max_kl_line_search_never_accepts_a_max_state_kl_above_delta(env_id: str) -> None:
    delta = 0.02
    agent = TRPO(env_id, config=SMALL.replace(kl_constraint="max", max_kl=delta), seed=0)
    accepted = 0
    for _ in range(4):
        step, per_state = update_with_independent_kl(agent)
        assert float(per_state.max()) <= delta * (1 + 1e-5)
        assert float(per_state.max()) == pytest.approx(step["kl_max"], rel=1e-4, abs=1e-9)
        accepted += step["step_accepted"]
    assert accepted >= 2
    agent.close()


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_logs_kl_max_at_least_kl_and_its_own_figures(rule: str) -> None:
    agent = TRPO("Pendulum-v1", config=SMALL.replace(update_rule=rule), seed=0)
    agent.learn(768)
    for row in agent.history:
        assert row["kl_max"] >= row["kl"] >= 0
    own = {"trpo": "line_search_steps", "npg": "xFx", "pg": "policy_epochs_run", "penalty": "penalty_beta",
           "ppo": "clip_fraction"}[rule]
    assert all(own in row for row in agent.history)
    agent.close()


def test_rule_defaults_apply_when_a_preset_switches_rule() -> None:
    pytest.importorskip("mujoco")
    for rule, defaults in RULE_DEFAULTS.items():
        agent = TRPO("Hopper-v5", update_rule=rule)
        assert agent.preset == "Hopper" and agent.config.normalize_reward  # the rest of the preset stays
        for name, value in defaults.items():
            assert getattr(agent.config, name) == value, (rule, name)
        agent.close()
    ppo = TRPO("Pendulum-v1", update_rule="ppo", policy_epochs=3)
    assert ppo.config.policy_epochs == 3 and ppo.config.policy_minibatch == 64
    ppo.close()
    assert TRPOConfig().policy_lr is None  # trpo has no policy learning rate


def test_holdout_share_is_kept_out_of_the_step_and_measured() -> None:
    agent = TRPO("CartPole-v1", config=SMALL.replace(holdout_fraction=0.25), seed=0)
    seen = []
    update = agent.update_rule.update
    agent.update_rule.update = lambda actor, batch: seen.append(batch.size) or update(actor, batch)  # type: ignore
    agent.learn(512)
    assert seen == [192, 192]  # 256 samples per batch, a quarter held out
    for row in agent.history:
        assert 0 <= row["kl_holdout"] <= row["kl_holdout_max"]
    assert any(row["kl_holdout"] > 0 for row in agent.history)
    agent.close()


def test_ppo_early_stop_at_target_kl() -> None:
    cfg = SMALL.replace(update_rule="ppo", target_kl=1e-4, policy_epochs=10, policy_lr=1e-3)
    agent = TRPO("CartPole-v1", config=cfg, seed=0)
    agent.learn(512)
    assert all(row["step_status"] == "early_stop" and row["policy_epochs_run"] < 10 for row in agent.history)
    agent.close()


SPACES = ["CartPole-v1", "Pendulum-v1", "trpo_testenvs:MultiDiscreteAct-v0", "trpo_testenvs:MultiBinaryAct-v0",
          "trpo_testenvs:DiscreteObs-v0", "trpo_testenvs:DictObs-v0"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("env_id", SPACES)
def test_every_rule_moves_the_policy_on_every_space(rule: str, env_id: str) -> None:
    agent = TRPO(env_id, config=SMALL.replace(update_rule=rule, steps_per_env=64), seed=0)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.learn(256)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    assert all(np.isfinite(row["kl"]) and row["step_accepted"] for row in agent.history)
    agent.close()


# Through the CLI, each rule on another space (the API test above crosses every rule with every space).
CLI_PAIRS = [("pg", "MultiDiscreteAct-v0"), ("penalty", "DictObs-v0"), ("ppo", "MultiBinaryAct-v0"),
             ("npg", "DiscreteObs-v0")]


@pytest.mark.parametrize("rule,env_id", [(rule, f"trpo_testenvs:{env}") for rule, env in CLI_PAIRS])
def test_rules_train_checkpoint_and_resume_through_the_cli(tmp_path, rule: str, env_id: str) -> None:
    run = tmp_path / "run"
    res = trpo("train", "--env", env_id, "--update-rule", rule, "--total-steps", "512", "--checkpoint-every", "1",
               "--run-dir", str(run), *FAST)
    assert res.returncode == 0, res.stderr
    # --env names the test envs' module again, which a resume imports only when named (docs/security.md).
    more = trpo("train", "--resume", str(run), "--env", env_id, "--total-steps", "768", "--no-progress",
                "--eval-episodes", "1")
    assert more.returncode == 0, more.stderr
    rows = metrics(run)
    assert [r["update"] for r in rows] == [1, 2, 3] and all(r["kl_max"] >= r["kl"] for r in rows)
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["config"]["update_rule"] == rule
    if rule != "npg":  # the first-order rules' Adam state is part of the checkpoint
        assert state["update_rule"]["optimizer"]["state"]
