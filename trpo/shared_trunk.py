"""A shared actor-critic trunk's trust region (config `shared_trunk`; docs/scale.md): after the value fit moved the
shared body, and with it the policy, the fit's change is backtracked until the update as a whole passes the
paper's test against pi_old again (trust_region.keep_trust_region), or undone.

Sets only the actor's parameters; reads the batch the policy step used. No envs, disk or randomness.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution
from trpo.networks import Actor
from trpo.trust_region import keep_trust_region
from trpo.update_rules import PolicyBatch


def unmoved_by_value_fit(step: dict[str, Any], config: TRPOConfig) -> dict[str, Any]:
    """A shared trunk kept out of the value fit (value_fit_trunk false): the fit trained the value head alone, so
    the policy after it is the step's, bit for bit, and so is its KL; nothing of the trunk changed to keep."""
    kl = step["kl_max"] if config.kl_constraint == "max" else step["kl"]
    return {"kl_after_value_fit": kl, "value_fit_trunk_fraction": 0.0, "value_fit_backtracks": 0}


def recheck_trust_region(actor: Actor, dist: ActionDistribution, batch: PolicyBatch, theta_policy: Tensor,
                         config: TRPOConfig) -> dict[str, Any]:
    """A shared trunk, after the value fit moved the actor's parameters away from the policy step's theta_policy:
    the fit's change (of the trunk: the head is the policy's alone) backtracked until the update as a whole passes
    the paper's test against pi_old, exact KL <= max_kl (or the step's own KL where a rule without a line search went
    past it) and the surrogate not below min(pi_old's, the step's) (trust_region.keep_trust_region); none passing:
    theta_policy exactly. Sets the actor's parameters; returns the logged figures."""
    reduce_kl = torch.amax if config.kl_constraint == "max" else torch.mean
    params = list(actor.parameters())

    @torch.no_grad()
    def evaluate(theta: Tensor) -> tuple[float, float]:  # through the actor itself, as it will act
        torch.nn.utils.vector_to_parameters(theta, params)
        out = actor(batch.inputs)
        kl, logp = reduce_kl(dist.kl(batch.old_params, out)), dist.log_prob(out, batch.actions)
        return float(kl), float(batch.surrogate(logp))

    theta_fitted = torch.nn.utils.parameters_to_vector(params)
    kl_policy, surrogate_policy = evaluate(theta_policy)  # the step's own, measured as the candidates are
    floor = min(float(batch.surrogate(batch.old_log_probs)), surrogate_policy)
    kept = keep_trust_region(evaluate, theta_policy, theta_fitted, max(config.max_kl, kl_policy), floor,
                             config.backtrack_ratio, config.max_backtracks)
    torch.nn.utils.vector_to_parameters(kept.theta, params)
    kl_after = kept.kl if kept.fraction > 0 else kl_policy
    return {"kl_after_value_fit": kl_after, "value_fit_trunk_fraction": kept.fraction,
            "value_fit_backtracks": kept.backtracks}
