"""Our TRPO step against sb3-contrib's, on the same batch from the same weights: an independent implementation
(Hessian of its KL by double backprop, its own CG and line search) must land on the same parameters. sb3-contrib
averages a Gaussian's KL over action dimensions, so its target_kl and cg_damping are ours / action_dim."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from trpo import TRPO, TRPOConfig
from trpo.update_rules import PolicyBatch

# Floats through kernels that numpy and torch pick per CPU: scripts/dev.py test runs these again with others forced.
pytestmark = pytest.mark.numerics

pytest.importorskip("sb3_contrib")

# our parameter name -> sb3-contrib's (MlpPolicy: separate 64-64 tanh networks for the policy and the value)
NAMES = {"body.0.weight": "mlp_extractor.policy_net.0.weight", "body.0.bias": "mlp_extractor.policy_net.0.bias",
         "body.2.weight": "mlp_extractor.policy_net.2.weight", "body.2.bias": "mlp_extractor.policy_net.2.bias",
         "head.linear.weight": "action_net.weight", "head.linear.bias": "action_net.bias"}


def _sb3_update(env_id: str, target_kl: float, cg_damping: float) -> dict[str, Any]:
    """One sb3-contrib TRPO update (collect, then train); the weights before and after, and the batch as its
    policy step saw it (before train() flattens the buffer env-major)."""
    from sb3_contrib import TRPO as SB3TRPO
    from stable_baselines3.common.env_util import make_vec_env

    model = SB3TRPO("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), n_steps=256, batch_size=128,
                    target_kl=target_kl, cg_damping=cg_damping, cg_max_steps=25, n_critic_updates=1, seed=0,
                    device="cpu")
    seen: dict[str, Any] = {}
    train = model.train

    def snapshot_then_train() -> None:
        buf = model.rollout_buffer
        seen["before"] = copy.deepcopy(model.policy.state_dict())
        seen["obs"] = buf.observations.reshape(-1, buf.observations.shape[-1]).copy()
        seen["actions"] = buf.actions.reshape(len(seen["obs"]), -1).copy()
        seen["advantages"] = buf.advantages.reshape(-1).copy()
        train()
        seen["after"] = copy.deepcopy(model.policy.state_dict())

    model.train = snapshot_then_train
    model.learn(512)
    model.env.close()
    return seen


@pytest.mark.parametrize("env_id, action_dim", [("CartPole-v1", None), ("Hopper-v5", 3)])
def test_one_trpo_step_equals_sb3_contribs_on_the_same_batch(env_id: str, action_dim: int | None) -> None:
    if env_id.startswith("Hopper"):
        pytest.importorskip("mujoco")
    torch.set_num_threads(1)
    scale = action_dim or 1  # Discrete: the same KL in both libraries
    seen = _sb3_update(env_id, target_kl=0.01, cg_damping=0.1)
    agent = TRPO(env_id, TRPOConfig(max_kl=0.01 * scale, cg_damping=0.1 * scale, cg_iters=25), seed=0)
    before = {ours: seen["before"][theirs] for ours, theirs in NAMES.items()}
    if action_dim:
        before["head.log_std"] = seen["before"]["log_std"]
    agent.actor.load_state_dict(before)
    obs = torch.as_tensor(seen["obs"], dtype=torch.float32)
    actions = torch.as_tensor(seen["actions"], dtype=torch.float32 if action_dim else torch.int64)
    actions = actions if action_dim else actions.reshape(-1)
    adv = torch.as_tensor(seen["advantages"], dtype=torch.float32)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # sb3-contrib's normalize_advantage, as ours
    with torch.no_grad():
        old_log_probs = agent.dist.log_prob(agent.actor(obs), actions)
    step = agent.update_rule.update(agent.actor, PolicyBatch.of(agent.actor, obs, actions, old_log_probs, adv))
    assert step["step_accepted"]
    after = agent.actor.state_dict()
    theirs_after = {ours: seen["after"][theirs] for ours, theirs in NAMES.items()}
    if action_dim:
        theirs_after["head.log_std"] = seen["after"]["log_std"]
    ours_delta = torch.cat([(after[k] - before[k]).flatten() for k in before])
    sb3_delta = torch.cat([(theirs_after[k] - before[k]).flatten() for k in before])
    assert float(sb3_delta.norm()) > 0
    # The same step to float32 rounding (CG in float32 in both, 25 iterations at most; measured: relative
    # differences 4e-5 on CartPole, 6e-6 on Hopper).
    assert float((ours_delta - sb3_delta).norm() / sb3_delta.norm()) < 1e-4
    np.testing.assert_allclose(ours_delta.numpy(), sb3_delta.numpy(), rtol=0, atol=1e-4 * float(sb3_delta.abs().max()))
    agent.close()
