"""Policy update rules: the TRPO family on one machinery, behind one narrow call.

    rule = make_update_rule(config, dist, actor, generator)
    stats = rule.update(actor, batch)        # the new parameters go into `actor`; `stats` are logged

| rule      | maximizes                                  | how                                 | class              |
|-----------|--------------------------------------------|-------------------------------------|--------------------|
| `trpo`    | L s.t. KL <= delta (mean or max KL)         | CG natural step, line search        | TrustRegionRule    |
| `npg`     | L along the natural gradient, to KL = delta | the same step, taken as is          | TrustRegionRule    |
| `pg`      | L                                           | Adam ascent                         | PolicyGradientRule |
| `penalty` | L - beta KL (fixed, adaptive; theorem's C)  | Adam ascent                         | PenaltyRule        |
| `ppo`     | L_clip                                      | Adam ascent, early stop at a KL     | PPORule            |

Every rule sees the same `PolicyBatch` (collector, advantages, normalization and critic are shared), and
`policy_stats` measures every rule's step the same way afterwards (exact mean and max KL, and on a held-out
share of the batch). The objectives are pure functions in objectives.py; the trust-region step in
trust_region.py. Adding a rule: a class with `update`, `state_dict`, `load_state_dict`, and one line in RULES.

A rule changes only the actor's parameters and its own state (Adam's moments, the penalty's beta): never the
critic, the normalizers or the batch. It steps no env, writes nothing to disk, and draws random numbers only from
the generator it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import functional_call

from trpo import objectives as obj
from trpo.config import TRPOConfig
from trpo.conv_jacobian import conv_linearization
from trpo.distributions import ActionDistribution, Params
from trpo.kfac import kfac
from trpo.networks import Actor
from trpo.optim import Adam
from trpo.sequences import Inputs, Sequences, unit_steps, units
from trpo.trust_region import autograd_linearization, gauss_newton_fvp, hessian_fvp, trpo_step


@dataclass(frozen=True)
class PolicyBatch:
    """What a rule learns from: flat samples, pi_old's log-probabilities and distribution params, advantages.
    A recurrent actor's batch also holds its `Sequences` (sequences.py), and the flat tensors are in their order;
    minibatches and held-out shares then take whole sequences (`units`)."""

    obs: Tensor  # [B, D], normalized as pi_old saw them
    actions: Tensor  # [B, ...]
    old_log_probs: Tensor  # [B]: log pi_old(a|s)
    advantages: Tensor  # [B], normalized if the config says so
    old_params: Params  # pi_old's distribution params on obs, detached
    # Vine sampling with sampled actions: the rollout state of each sample, and `advantages` holds Q - mean_k Q
    # there (objectives.self_normalized_surrogate). None: the surrogate is mean(r A).
    groups: Tensor | None = None
    seq: Sequences | None = None  # a recurrent actor's inputs

    @classmethod
    def of(cls, actor: Actor, obs: Tensor, actions: Tensor, old_log_probs: Tensor, advantages: Tensor,
           groups: Tensor | None = None, seq: Sequences | None = None) -> PolicyBatch:
        """The batch with pi_old's params computed by `actor`, which must still be pi_old."""
        with torch.no_grad():
            old_params = tuple(p.detach() for p in actor(obs if seq is None else seq))
        return cls(obs, actions, old_log_probs, advantages, old_params, groups, seq)

    @classmethod
    def sequential(cls, actor: Actor, obs: Tensor, starts: Tensor, states: Tensor, actions: Tensor,
                   old_log_probs: Tensor, advantages: Tensor, length: int) -> PolicyBatch:
        """A recurrent actor's batch from time-major [T, N] tensors (obs [T, N, D], actions [T, N, ...],
        log-probs and advantages [T * N]), cut into sequences of `length` steps."""
        seq, order = Sequences.of(obs, starts, states, length)

        def flat(x: Tensor) -> Tensor:
            return x.reshape(-1, *x.shape[2:])[order]

        return cls.of(actor, flat(obs), flat(actions), old_log_probs[order], advantages[order], seq=seq)

    @property
    def inputs(self) -> Inputs:
        """What the actor takes: the observations, or a recurrent actor's sequences."""
        return self.obs if self.seq is None else self.seq

    def surrogate(self, log_probs: Tensor) -> Tensor:
        """L(theta) from log pi_theta(a|s) of the batch's samples: TRPO's mean(r A), or the vine's self-normalized
        estimator."""
        if self.groups is None:
            return obj.surrogate(log_probs, self.old_log_probs, self.advantages)
        return obj.self_normalized_surrogate(log_probs, self.old_log_probs, self.advantages, self.groups)

    @property
    def size(self) -> int:
        return self.obs.shape[0]

    @property
    def units(self) -> int:
        """What minibatches and held-out shares are drawn from: samples, or a recurrent actor's sequences."""
        return units(self.inputs)

    def subset(self, idx: Tensor | slice) -> PolicyBatch:
        """The units (samples or sequences) `idx`."""
        seq, rows = (None, idx) if self.seq is None else self.seq.subset(idx)
        return PolicyBatch(self.obs[rows], self.actions[rows], self.old_log_probs[rows], self.advantages[rows],
                           tuple(p[rows] for p in self.old_params), None if self.groups is None else self.groups[rows],
                           seq)

    def split(self, fraction: float, generator: torch.Generator) -> tuple[PolicyBatch, PolicyBatch | None]:
        """A random `fraction` of the units held out (at least one on each side), or (self, None) for 0."""
        if fraction <= 0:
            return self, None
        n = self.units
        held = min(max(1, round(fraction * n)), n - 1)
        order = torch.randperm(n, generator=generator).to(self.obs.device)
        return self.subset(order[held:]), self.subset(order[:held])


class UpdateRule(Protocol):
    """One policy update per batch; state (optimizer moments, an adaptive beta) goes into checkpoints."""

    def update(self, actor: Actor, batch: PolicyBatch) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def policy_stats(actor: Actor, dist: ActionDistribution, batch: PolicyBatch,
                 holdout: PolicyBatch | None) -> dict[str, Any]:
    """Every rule's step measured alike, after it: the exact mean and max over states of KL(pi_old || pi_new)
    (the theorem bounds the max; TRPO constrains the mean), and both on the held-out share when there is one;
    and pi_old's entropy."""
    with torch.no_grad():
        per_state = dist.kl(batch.old_params, actor(batch.inputs))
        stats: dict[str, Any] = {"kl": float(per_state.mean()), "kl_max": float(per_state.max()),
                                 "entropy": float(dist.entropy(batch.old_params).mean())}
        if holdout is not None:
            held = dist.kl(holdout.old_params, actor(holdout.inputs))
            stats["kl_holdout"], stats["kl_holdout_max"] = float(held.mean()), float(held.max())
    return stats


# --- trpo and npg ------------------------------------------------------------------------------------------


def flat_parameters(actor: Actor) -> tuple[Tensor, Callable[[Tensor, Inputs], Params]]:
    """theta as one vector, and params_of(theta, inputs): the actor's distribution params with theta plugged in."""
    named = list(actor.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])
    shapes = [(name, p.shape, p.numel()) for name, p in named]

    def params_of(vec: Tensor, obs: Inputs) -> Params:
        tensors, offset = {}, 0
        for name, shape, numel in shapes:
            tensors[name] = vec[offset : offset + numel].view(shape)
            offset += numel
        params: Params = functional_call(actor, tensors, (obs,))
        return params

    return theta, params_of


class TrustRegionRule:
    """trpo and npg: g, x = F^-1 g by CG with Fisher-vector products (natural_gradient 'cg'; 'kfac_cg': CG
    preconditioned with K-FAC's blocks; 'kfac': x from those blocks alone), beta = sqrt(2 delta / x^T F x), then the
    backtracking line search (trpo) or the full step (npg): trust_region.trpo_step. `generator` draws K-FAC's
    probes where config.kfac_samples asks for sampled factors, and nothing otherwise."""

    def __init__(self, config: TRPOConfig, dist: ActionDistribution, generator: torch.Generator | None = None) -> None:
        self.config, self.dist, self.generator = config, dist, torch.Generator() if generator is None else generator

    def update(self, actor: Actor, batch: PolicyBatch) -> dict[str, Any]:
        cfg, dist = self.config, self.dist
        theta_old, params_of = flat_parameters(actor)
        reduce_kl = torch.amax if cfg.kl_constraint == "max" else torch.mean  # what the line search bounds

        def surrogate(theta: Tensor, params: Params | None = None) -> Tensor:
            params = params_of(theta, batch.inputs) if params is None else params
            return batch.surrogate(dist.log_prob(params, batch.actions))

        # The Fisher metric of every k-th sample (a recurrent actor: of every k-th sequence).
        k = cfg.fisher_subsample
        part = batch if k == 1 else batch.subset(slice(None, None, k))
        sub_obs, sub_old = part.inputs, part.old_params
        # K-FAC's pass (kfac.py): its blocks are the direction itself or CG's preconditioner, and the layers' output
        # gradients it keeps give exact Fisher-vector products without a pass through the network (fisher_product
        # 'layerwise'; K-FAC's beta).
        layerwise = cfg.fisher_product == "layerwise"
        blocks = kfac(actor, dist, part.obs, cfg.cg_damping, cfg.kfac_samples, self.generator,
                      factors=cfg.natural_gradient != "cg") if cfg.natural_gradient != "cg" or layerwise else None
        # A CNN's Jacobian is built once (conv_jacobian.py) when CG makes many products with it; any other actor's
        # products go through autograd, except K-FAC's single one (for beta), which its own pass gives.
        many = cfg.fisher_product == "gauss_newton" and cfg.natural_gradient != "kfac"
        conv = conv_linearization(actor, sub_obs, theta_old) if many else None
        whole = conv if conv is not None and k == 1 else None  # its params are pi_old's on the whole batch
        shared = blocks.params if blocks is not None and k == 1 else None  # so are K-FAC's, with their graph

        @torch.no_grad()
        def evaluate(theta: Tensor) -> tuple[float, float]:
            # One forward pass for both (none for theta_old where the Jacobian's or K-FAC's pass gave its params).
            if theta is theta_old and (whole is not None or shared is not None):
                params = whole.params if whole is not None else tuple(p.detach() for p in shared or ())
            else:
                params = params_of(theta, batch.inputs)
            return float(reduce_kl(dist.kl(batch.old_params, params))), float(surrogate(theta, params))

        if whole is not None:  # g = J^T dL/dparams: the chain rule, without another pass through the CNN
            params = tuple(p.detach().requires_grad_(True) for p in whole.params)
            grad = whole.vjp(torch.autograd.grad(surrogate(theta_old, params), params))
        elif shared is not None:  # g through the graph of K-FAC's forward pass, without another one
            grads = torch.autograd.grad(surrogate(theta_old, shared), list(actor.parameters()))
            grad = torch.cat([g.reshape(-1) for g in grads])
        else:
            theta = theta_old.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(surrogate(theta), theta)
        if cfg.fisher_product == "hessian":
            fvp = hessian_fvp(lambda th: dist.kl(sub_old, params_of(th, sub_obs)).mean(), theta_old, cfg.cg_damping)
        elif blocks is not None and blocks.fisher is not None and (layerwise or cfg.natural_gradient == "kfac"):
            fvp = blocks.fisher.product  # from kfac()'s own pass (kfac.LayerwiseFisher, or its ExactFisher fallback)
        else:
            lin = conv or autograd_linearization(lambda th: params_of(th, sub_obs), theta_old)
            fvp = gauss_newton_fvp(lin, dist.fisher_metric_product, cfg.cg_damping)

        step = trpo_step(
            theta_old, grad, fvp, evaluate,
            max_kl=cfg.max_kl, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol,
            backtrack_ratio=cfg.backtrack_ratio, max_backtracks=cfg.max_backtracks,
            line_search=cfg.update_rule == "trpo",
            precondition=blocks.inverse if blocks is not None and cfg.natural_gradient == "kfac_cg" else None,
            direction=blocks.inverse if blocks is not None and cfg.natural_gradient == "kfac" else None,
        )
        if step.accepted:
            torch.nn.utils.vector_to_parameters(step.theta, actor.parameters())
        return {
            "surrogate_gain": step.surrogate_gain,
            "expected_gain": step.expected_gain,
            "line_search_steps": step.line_search_steps,
            "step_fraction": step.step_fraction,
            "step_accepted": step.accepted,
            "step_status": step.reason,
            "cg_iterations": step.cg_iterations,
            "cg_residual": step.cg_residual,
            "xFx": step.xFx,
            "beta": step.beta,
            "grad_norm": step.grad_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# --- first-order rules -------------------------------------------------------------------------------------

Objective = Callable[[Params, PolicyBatch], Tensor]  # (params of the minibatch, the minibatch) -> scalar


def surrogate_of(dist: ActionDistribution, params: Params, batch: PolicyBatch) -> Tensor:
    return batch.surrogate(dist.log_prob(params, batch.actions))


def gradient_ascent(actor: Actor, optimizer: Adam, batch: PolicyBatch, objective: Objective, config: TRPOConfig,
                    generator: torch.Generator, stop: Callable[[], bool] | None = None) -> int:
    """Adam on -objective: `policy_epochs` passes of shuffled minibatches of `policy_minibatch` samples (0: the
    whole batch, unshuffled), the gradient's norm clipped to `max_grad_norm` (0: not clipped); after each pass,
    `stop()` may end it early. Returns the number of passes run."""
    epochs, minibatch = int(config.policy_epochs or 1), int(config.policy_minibatch or 0)
    max_grad_norm = float(config.max_grad_norm or 0.0)
    params = list(actor.parameters())
    n = batch.units  # a recurrent actor's minibatches take whole sequences, about `minibatch` samples' worth
    size = n if minibatch <= 0 else min(max(1, minibatch // unit_steps(batch.inputs)), n)
    for epoch in range(1, epochs + 1):
        order = None if size == n else torch.randperm(n, generator=generator).to(batch.obs.device)
        for start in range(0, n, size):
            part = batch if order is None else batch.subset(order[start : start + size])
            grads = torch.autograd.grad(-objective(actor(part.inputs), part), params)
            if max_grad_norm > 0:  # as torch.nn.utils.clip_grad_norm_
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                if norm > max_grad_norm:
                    grads = tuple(g * (max_grad_norm / (norm + 1e-6)) for g in grads)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
        if stop is not None and stop():
            return epoch
    return epochs


def surrogate_gradient_norm(actor: Actor, dist: ActionDistribution, batch: PolicyBatch) -> tuple[float, float]:
    """(||g||, L(theta_old)) on the whole batch, before a first-order rule moves the policy."""
    params = list(actor.parameters())
    value = surrogate_of(dist, actor(batch.inputs), batch)
    grads = torch.autograd.grad(value, params)
    return float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))), float(value.detach())


def _exact_surrogate(actor: Actor, dist: ActionDistribution, batch: PolicyBatch) -> float:
    with torch.no_grad():
        return float(surrogate_of(dist, actor(batch.inputs), batch))


class PolicyGradientRule:
    """pg: Adam ascent on L (at theta_old its gradient is the policy gradient g); Spinning Up's VPG by default."""

    def __init__(self, config: TRPOConfig, dist: ActionDistribution, actor: Actor, generator: torch.Generator) -> None:
        self.config, self.dist, self.generator = config, dist, generator
        self.optimizer = Adam(actor.parameters(), lr=float(config.policy_lr or 0.0))

    def update(self, actor: Actor, batch: PolicyBatch) -> dict[str, Any]:
        cfg = self.config
        grad_norm, before = surrogate_gradient_norm(actor, self.dist, batch)
        epochs = gradient_ascent(actor, self.optimizer, batch, lambda p, b: surrogate_of(self.dist, p, b), cfg,
                                 self.generator)
        return {"surrogate_gain": _exact_surrogate(actor, self.dist, batch) - before, "grad_norm": grad_norm,
                "step_accepted": True, "step_status": "first_order", "policy_epochs_run": epochs}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class PenaltyRule:
    """penalty: Adam ascent on L - beta * KL(pi_old || pi_theta).

    kl_penalty 'fixed': beta = penalty_coef, on the mean KL. 'adaptive': the same, beta adapted after each update
    from the update's exact mean KL (objectives.adaptive_beta). 'theory': the theorem's bound, L / (1 - gamma) -
    C * max KL with C from this batch's max |A| (objectives.theory_penalty_objective): minibatches use their own
    max KL."""

    def __init__(self, config: TRPOConfig, dist: ActionDistribution, actor: Actor, generator: torch.Generator) -> None:
        self.config, self.dist, self.generator = config, dist, generator
        self.optimizer = Adam(actor.parameters(), lr=float(config.policy_lr or 0.0))
        self.beta = float(config.penalty_coef)

    def objective(self, batch_beta: float) -> Objective:
        cfg, dist = self.config, self.dist
        if cfg.kl_penalty == "theory":
            return lambda p, b: obj.theory_penalty_objective(surrogate_of(dist, p, b), dist.kl(b.old_params, p).max(),
                                                             batch_beta, cfg.gamma)
        return lambda p, b: obj.penalized_surrogate(surrogate_of(dist, p, b), dist.kl(b.old_params, p).mean(),
                                                    batch_beta)

    def update(self, actor: Actor, batch: PolicyBatch) -> dict[str, Any]:
        cfg = self.config
        if cfg.kl_penalty == "theory":
            epsilon = float(batch.advantages.abs().max())
            beta = obj.theory_coefficient(epsilon, cfg.gamma)
        else:
            epsilon, beta = math.nan, self.beta
        grad_norm, before = surrogate_gradient_norm(actor, self.dist, batch)
        epochs = gradient_ascent(actor, self.optimizer, batch, self.objective(beta), cfg, self.generator)
        stats = {"surrogate_gain": _exact_surrogate(actor, self.dist, batch) - before, "grad_norm": grad_norm,
                 "step_accepted": True, "step_status": "first_order", "policy_epochs_run": epochs,
                 "penalty_beta": beta}
        if cfg.kl_penalty == "theory":
            stats["penalty_epsilon"] = epsilon
        elif cfg.kl_penalty == "adaptive":
            with torch.no_grad():
                kl = float(self.dist.kl(batch.old_params, actor(batch.inputs)).mean())
            self.beta = obj.adaptive_beta(self.beta, kl, cfg.kl_target)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.beta = float(state["beta"])


class PPORule:
    """ppo: Adam ascent on the clipped surrogate L_clip, optionally stopped once the exact mean KL on the batch
    exceeds 1.5 target_kl (checked after each pass); the critic stays the separate network fitted as for TRPO."""

    def __init__(self, config: TRPOConfig, dist: ActionDistribution, actor: Actor, generator: torch.Generator) -> None:
        self.config, self.dist, self.generator = config, dist, generator
        self.optimizer = Adam(actor.parameters(), lr=float(config.policy_lr or 0.0))

    def update(self, actor: Actor, batch: PolicyBatch) -> dict[str, Any]:
        cfg, dist = self.config, self.dist

        def objective(params: Params, part: PolicyBatch) -> Tensor:
            return obj.clipped_surrogate(dist.log_prob(params, part.actions), part.old_log_probs, part.advantages,
                                         cfg.clip_range)

        def kl_exceeded() -> bool:
            with torch.no_grad():
                return float(dist.kl(batch.old_params, actor(batch.inputs)).mean()) > 1.5 * cfg.target_kl

        grad_norm, before = surrogate_gradient_norm(actor, dist, batch)
        epochs = gradient_ascent(actor, self.optimizer, batch, objective, cfg, self.generator,
                                 stop=kl_exceeded if cfg.target_kl > 0 else None)
        with torch.no_grad():
            log_probs = dist.log_prob(actor(batch.inputs), batch.actions)
        stopped = cfg.target_kl > 0 and epochs < int(cfg.policy_epochs or 1)
        return {"surrogate_gain": float(obj.surrogate(log_probs, batch.old_log_probs, batch.advantages)) - before,
                "grad_norm": grad_norm, "step_accepted": True,
                "step_status": "early_stop" if stopped else "first_order", "policy_epochs_run": epochs,
                "clip_fraction": obj.clip_fraction(log_probs, batch.old_log_probs, cfg.clip_range)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


RULES: dict[str, Callable[..., UpdateRule]] = {
    "trpo": lambda cfg, dist, actor, gen: TrustRegionRule(cfg, dist, gen),
    "npg": lambda cfg, dist, actor, gen: TrustRegionRule(cfg, dist, gen),
    "pg": PolicyGradientRule,
    "penalty": PenaltyRule,
    "ppo": PPORule,
}


def make_update_rule(config: TRPOConfig, dist: ActionDistribution, actor: Actor,
                     generator: torch.Generator) -> UpdateRule:
    return RULES[config.update_rule](config, dist, actor, generator)
