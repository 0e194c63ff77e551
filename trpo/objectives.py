"""The policy objectives of the TRPO family as pure functions of per-sample tensors. Imports torch only: no
networks, distributions, config, envs or randomness (update_rules.py calls them).

    r_t(theta) = pi_theta(a_t|s_t) / pi_old(a_t|s_t)                     probability ratio
    L          = mean_t r_t A_t                                           TRPO's surrogate (Schulman et al. 2015)
    L_vine     = mean_n sum_k r_nk Q_nk / sum_k r_nk                      vine, K sampled actions per state (sec. 5.2)
    L_clip     = mean_t min(r_t A_t, clip(r_t, 1 - e, 1 + e) A_t)           PPO's clipped surrogate (2017, eq. 7)
    L_pen      = L - beta * KL(pi_old || pi_theta)                        the penalty form (2015 sec. 4; 2017 sec. 4)
    C          = 4 eps gamma / (1 - gamma)^2,  eps = max_{s,a} |A(s,a)|     the bound's coefficient (2015, Theorem 1)
    beta_k+1   = 2 beta if KL > 1.5 d_targ;  beta / 2 if KL < d_targ / 1.5     adaptive KL penalty (2017, section 4)
    L_V        = mean (V - R)^2 / Var(R) + c KL(pi_ref || pi) / delta         shared trunk's value fit (PPG's cloning)

The theorem's bound is eta(pi_new) >= L_pi(pi_new) - C * max_s KL(pi_old || pi_new)(s), where L_pi - eta(pi) sums
the advantages over the *discounted state visitation* rho (total mass 1 / (1 - gamma)). L above is a mean over
the batch's samples, so in the theorem's units the surrogate is L / (1 - gamma): `theory_penalty_objective`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ratio(log_probs: Tensor, old_log_probs: Tensor) -> Tensor:
    """r_t = exp(log pi_theta(a_t|s_t) - log pi_old(a_t|s_t))."""
    return torch.exp(log_probs - old_log_probs)


def surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor) -> Tensor:
    """L = mean_t r_t A_t (its gradient at theta_old is the policy gradient g)."""
    return (ratio(log_probs, old_log_probs) * advantages).mean()


def self_normalized_surrogate(log_probs: Tensor, old_log_probs: Tensor, q: Tensor, groups: Tensor) -> Tensor:
    """L_vine = mean over rollout states n of sum_k r_nk Q_nk / sum_k r_nk: the vine's self-normalized importance
    sampling estimator for K actions sampled from pi_old at each state. Samples of one state share a `groups` id;
    any subset of samples (a minibatch, a held-out share) is again an estimate over the states it holds."""
    r = ratio(log_probs, old_log_probs)
    ids, index = torch.unique(groups, return_inverse=True)
    weighted = torch.zeros(len(ids), dtype=r.dtype, device=r.device).index_add(0, index, r * q)
    total = torch.zeros(len(ids), dtype=r.dtype, device=r.device).index_add(0, index, r)
    return (weighted / total).mean()


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_range: float) -> Tensor:
    """L_clip = mean_t min(r_t A_t, clip(r_t, 1 - clip_range, 1 + clip_range) A_t)."""
    r = ratio(log_probs, old_log_probs)
    return torch.minimum(r * advantages, r.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages).mean()


def clip_fraction(log_probs: Tensor, old_log_probs: Tensor, clip_range: float) -> float:
    """Share of samples whose ratio lies outside [1 - clip_range, 1 + clip_range] (where L_clip is flat)."""
    return float(((ratio(log_probs, old_log_probs) - 1.0).abs() > clip_range).float().mean())


def penalized_surrogate(surrogate_value: Tensor, kl: Tensor, beta: float) -> Tensor:
    """L - beta * KL: the penalty form, with the mean KL (fixed or adaptive beta) or the max KL (the theorem)."""
    return surrogate_value - beta * kl


def theory_coefficient(max_abs_advantage: float, gamma: float) -> float:
    """C = 4 eps gamma / (1 - gamma)^2 with eps = max |A|: the coefficient of the max KL in Theorem 1."""
    return 4.0 * max_abs_advantage * gamma / (1.0 - gamma) ** 2


def theory_penalty_objective(surrogate_value: Tensor, max_kl: Tensor, coefficient: float, gamma: float) -> Tensor:
    """The theorem's lower bound on eta(pi_new) - eta(pi_old): L / (1 - gamma) - C * max_s KL. (The batch mean L
    counts each state once; the theorem weighs states by the discounted visitation, of mass 1 / (1 - gamma).)"""
    return surrogate_value / (1.0 - gamma) - coefficient * max_kl


def adaptive_beta(beta: float, kl: float, kl_target: float) -> float:
    """PPO's adaptive KL coefficient: doubled when the last update's KL exceeded 1.5 d_targ, halved when it fell
    below d_targ / 1.5, else kept."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


def shared_value_loss(values: Tensor, targets: Tensor, target_var: Tensor, kl: Tensor, max_kl: float,
                      coef: float) -> Tensor:
    """A shared trunk's value-fit loss: the squared error in units of the targets' variance, plus `coef` times the
    mean KL(pi_ref || pi_theta) in units of the trust region (pi_ref: the policy the step left). The KL term is
    Phasic Policy Gradient's behavioural cloning (Cobbe et al. 2021, eq. 3), made scale-free so one coefficient
    serves any reward scale: the fit is steered to move the policy as little as it can."""
    return (values - targets).pow(2).mean() / target_var + coef * kl.mean() / max_kl
