"""Action distributions for each supported Gymnasium action space.

A distribution is described by a tuple of parameter tensors with the batch on dim 0 ("params"):
categorical/Bernoulli logits, or a Gaussian's (mean, log_std). Each family implements, as pure functions of
params: sampling (as pick(params[0] + shift), so that rollouts can sample in numpy from noise drawn per batch),
mode, log-probability, entropy, KL(old || new), and the product with its Fisher metric M
(the Hessian of KL(p_old || p) in the distribution parameters at p = p_old), which the Gauss-Newton
Fisher-vector product F v = J^T M J v uses.

It knows action spaces, not envs, config or the networks' bodies. Its noise comes from the generator the caller
passes to `noise`; only the heads' initial weights draw on torch's default generator, which the learner seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from trpo.observations import UnsupportedSpaceError

Params = tuple[Tensor, ...]
Array = TypeVar("Array", np.ndarray, Tensor)

MASKED_LOGIT = -1e9  # a masked action's logit: probability exactly 0 in float32, log-probability finite


class ActionDistribution:
    """Interface of an action-distribution family. Methods are pure functions of params and actions."""

    head_dim: int
    # Logit ranges that each hold one categorical; an action mask needs one valid action in each. None: this
    # family takes no action masks.
    mask_groups: list[tuple[int, int]] | None = None

    def make_head(self, in_dim: int, init_log_std: float) -> Head:
        """A module mapping features [B, in_dim] to params."""
        linear = nn.Linear(in_dim, self.head_dim)
        _small_init(linear)
        return _TupleHead(linear)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        """Noise for `shape[:-1]` samples (shape[-1] = head_dim), drawn ahead so that rollouts draw it once."""
        raise NotImplementedError

    def shift(self, params: Params, noise: Tensor) -> Tensor:
        """The noise as an additive shift of the head output params[0], so that a sample is
        `pick(params[0] + shift)`. The identity but for the Gaussian (sigma * noise) and Bernoulli (-noise); no
        family's shift depends on the state, so the numpy acting policy applies it as one scale per batch
        (`numpy_explorer`). gSDE's state-dependent noise is the head's own (`SDEHead.explore`)."""
        return noise

    def pick(self, shifted: Array) -> Array:
        """The sample from the shifted head output. Written with operators that numpy arrays and torch tensors
        share: rollouts call it on numpy arrays at every env step, everything else on tensors."""
        raise NotImplementedError

    def sample_with_noise(self, params: Params, noise: Tensor) -> Tensor:
        """A sample as a deterministic function of params and pre-drawn noise."""
        return self.pick(params[0] + self.shift(params, noise))

    # How the acting policies (policy.py) sample, so that a family whose noise is no shift of params[0] (gSDE's)
    # is this class's business alone: `held_noise` (one noise held for several steps, sde_sample_freq), the
    # shape of one sample's noise (`head.noise_shape`, else head_dim), and the sample from the features the head
    # saw, in torch (`explore`) and in numpy (`numpy_explorer`, the same floats).
    held_noise: bool = False

    def explore(self, params: Params, features: Tensor, noise: Tensor, head: Head) -> Tensor:
        """A sample from params, the features the head saw and pre-drawn noise."""
        return self.sample_with_noise(params, noise)

    def numpy_explorer(self, head: Head) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """`explore` on numpy arrays, (params[0], features, noise) -> actions, for a head whose other params
        depend on no state: the shift is then one scale per batch, the same floats as the torch expression."""
        with torch.no_grad():
            params = head(torch.zeros(1, head.linear.in_features, device=head.linear.weight.device))
            scale = self.shift(tuple(p.cpu() for p in params), torch.ones(1, self.head_dim)).numpy()
        return _ShiftExplorer(self, scale)

    def sample(self, params: Params, generator: torch.Generator | None) -> Tensor:
        head = params[0]
        return self.sample_with_noise(params, self.noise(tuple(head.shape), generator, head.device, head.dtype))

    def mode(self, params: Params) -> Tensor:
        """The most likely action: the sample with zero shift."""
        return self.pick(params[0])

    def log_prob(self, params: Params, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self, params: Params) -> Tensor:
        raise NotImplementedError

    def kl(self, old: Params, new: Params) -> Tensor:
        """KL(old || new) per sample, summed over action dimensions: the joint KL of the action vector."""
        raise NotImplementedError

    def fisher_metric_product(self, params: Params, tangent: Params) -> Params:
        """M(params) @ tangent per sample, M the Hessian of KL(params || .) at params."""
        raise NotImplementedError

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions [B, ...] as the env expects them (clipped to Box bounds here, never in log_prob)."""
        raise NotImplementedError

    def to_env_list(self, actions: np.ndarray) -> list[Any]:
        """`to_env` as one action per env, in the form the env checks fastest."""
        return list(self.to_env(actions))


class _ShiftExplorer:
    """numpy: pick(params[0] + scale * noise). A class, not a closure: acting policies are pickled to workers."""

    def __init__(self, dist: ActionDistribution, scale: np.ndarray) -> None:
        self.dist, self.scale = dist, scale

    def __call__(self, out: np.ndarray, features: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.dist.pick(out + self.scale * noise)


class _SDEExplorer:
    """numpy: mu(s) + z(s) @ (sigma * eps) per sample (gSDE)."""

    def __init__(self, sigma: np.ndarray) -> None:
        self.sigma = sigma  # [F, A]

    def __call__(self, out: np.ndarray, features: np.ndarray, noise: np.ndarray) -> np.ndarray:
        actions: np.ndarray = out + (features[:, :, None] * (self.sigma * noise)).sum(1)
        return actions


class Head(nn.Module):
    """A distribution's head: features [B, in_dim] -> params. `linear` is its last layer (logits, or the mean)."""

    linear: nn.Linear

    def forward(self, features: Tensor) -> Params:
        raise NotImplementedError


class _TupleHead(Head):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, features: Tensor) -> Params:
        return (self.linear(features),)


def _small_init(linear: nn.Linear) -> None:
    # A near-uniform initial policy (as in the PPO/TRPO reference code): orthogonal with gain 0.01.
    nn.init.orthogonal_(linear.weight, gain=0.01)
    nn.init.zeros_(linear.bias)


def _categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    old_logp = torch.log_softmax(old_logits, dim=-1)
    new_logp = torch.log_softmax(new_logits, dim=-1)
    return (old_logp.exp() * (old_logp - new_logp)).sum(-1)


def _categorical_entropy(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _categorical_metric(logits: Tensor, tangent: Tensor) -> Tensor:
    # M = diag(p) - p p^T on the logits.
    p = torch.softmax(logits, dim=-1)
    return p * tangent - p * (p * tangent).sum(-1, keepdim=True)


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str,
            dtype: torch.dtype) -> Tensor:
    # Gumbel-max: argmax(logits + G) with G = -log(-log U) is an exact categorical sample.
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp_min_(1e-30)
    return -torch.log(-torch.log(u))


class Categorical(ActionDistribution):
    """Discrete(n, start): a categorical over n logits; env action = index + start."""

    def __init__(self, space: spaces.Discrete) -> None:
        self.n = int(space.n)
        self.start = int(space.start)
        self.head_dim = self.n
        self.mask_groups = [(0, self.n)]

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        return _gumbel(shape, generator, device, dtype)

    def pick(self, shifted: Array) -> Array:
        picked: Array = shifted.argmax(-1)  # Gumbel-max
        return picked

    def log_prob(self, params: Params, actions: Tensor) -> Tensor:
        logp = torch.log_softmax(params[0], dim=-1)
        return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Params) -> Tensor:
        return _categorical_entropy(params[0])

    def kl(self, old: Params, new: Params) -> Tensor:
        return _categorical_kl(old[0], new[0])

    def fisher_metric_product(self, params: Params, tangent: Params) -> Params:
        return (_categorical_metric(params[0], tangent[0]),)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        shifted: np.ndarray = actions.astype(np.int64) + self.start
        return shifted

    def to_env_list(self, actions: np.ndarray) -> list[Any]:
        # Python ints: Discrete.contains (which envs such as CartPole assert) checks them ~10x faster than numpy's.
        ints: list[Any] = self.to_env(actions).tolist()
        return ints


class MultiCategorical(ActionDistribution):
    """MultiDiscrete(nvec, start): independent categoricals, logits concatenated."""

    def __init__(self, space: spaces.MultiDiscrete) -> None:
        if space.nvec.ndim != 1:
            raise UnsupportedSpaceError(f"unsupported action space {space!r}: only 1-D MultiDiscrete is supported")
        sizes = [int(n) for n in space.nvec]
        self.start = np.asarray(space.start, dtype=np.int64)
        self.head_dim = sum(sizes)
        self.bounds = [0, *itertools.accumulate(sizes)]
        self.mask_groups = list(itertools.pairwise(self.bounds))

    def _split(self, logits: Array) -> list[Array]:
        """The logits of each sub-action (views; numpy or torch)."""
        return [logits[..., lo:hi] for lo, hi in itertools.pairwise(self.bounds)]

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        return _gumbel(shape, generator, device, dtype)

    def pick(self, shifted: Array) -> Array:
        picks = [logits.argmax(-1) for logits in self._split(shifted)]
        return torch.stack(picks, -1) if isinstance(shifted, Tensor) else np.stack(picks, -1)

    def log_prob(self, params: Params, actions: Tensor) -> Tensor:
        parts = [
            torch.log_softmax(lg, -1).gather(-1, actions[..., i : i + 1].long()).squeeze(-1)
            for i, lg in enumerate(self._split(params[0]))
        ]
        return torch.stack(parts, dim=-1).sum(-1)

    def entropy(self, params: Params) -> Tensor:
        return torch.stack([_categorical_entropy(lg) for lg in self._split(params[0])], dim=-1).sum(-1)

    def kl(self, old: Params, new: Params) -> Tensor:
        pairs = zip(self._split(old[0]), self._split(new[0]), strict=True)
        return torch.stack([_categorical_kl(o, n) for o, n in pairs], dim=-1).sum(-1)

    def fisher_metric_product(self, params: Params, tangent: Params) -> Params:
        pairs = zip(self._split(params[0]), self._split(tangent[0]), strict=True)
        return (torch.cat([_categorical_metric(lg, t) for lg, t in pairs], dim=-1),)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return actions.astype(np.int64) + self.start


class Bernoulli(ActionDistribution):
    """MultiBinary(n): independent Bernoullis over n logits."""

    def __init__(self, space: spaces.MultiBinary) -> None:
        self.shape = tuple(int(s) for s in np.atleast_1d(space.n))
        self.head_dim = int(np.prod(self.shape))

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        # Logistic noise L = logit(U): P(logits > L) = sigmoid(logits), an exact Bernoulli sample.
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp_(1e-30, 1 - 1e-7)
        return torch.log(u) - torch.log1p(-u)

    def shift(self, params: Params, noise: Tensor) -> Tensor:
        return -noise  # logits > L  <=>  logits - L > 0

    def pick(self, shifted: Array) -> Array:
        return shifted > 0  # bool; log_prob and to_env take it as 0/1

    def log_prob(self, params: Params, actions: Tensor) -> Tensor:
        logits = params[0]
        bce = nn.functional.binary_cross_entropy_with_logits(logits, actions.to(logits.dtype), reduction="none")
        return -bce.sum(-1)

    def entropy(self, params: Params) -> Tensor:
        logits = params[0]
        p = torch.sigmoid(logits)
        return nn.functional.binary_cross_entropy_with_logits(logits, p, reduction="none").sum(-1)

    def kl(self, old: Params, new: Params) -> Tensor:
        p = torch.sigmoid(old[0])
        log_p, log_q = nn.functional.logsigmoid(old[0]), nn.functional.logsigmoid(new[0])
        log_1p, log_1q = nn.functional.logsigmoid(-old[0]), nn.functional.logsigmoid(-new[0])
        return (p * (log_p - log_q) + (1 - p) * (log_1p - log_1q)).sum(-1)

    def fisher_metric_product(self, params: Params, tangent: Params) -> Params:
        p = torch.sigmoid(params[0])
        return (p * (1 - p) * tangent[0],)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return actions.astype(np.int8).reshape((-1, *self.shape))


class _GaussianHead(Head):
    def __init__(self, in_dim: int, action_dim: int, init_log_std: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, action_dim)  # the mean
        _small_init(self.linear)
        # State-independent log-std: a parameter of the actor, optimized with the mean's weights.
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, features: Tensor) -> Params:
        mean = self.linear(features)
        return mean, self.log_std.expand_as(mean)


SDE_EPS = 1e-6  # added to gSDE's variance, so that a state whose features vanish keeps a finite log-probability


class SDEHead(Head):
    """gSDE's head (generalized state-dependent exploration, Raffin et al. 2021): the mean from the features z(s),
    and the exploration matrix's scale sigma = exp(log_std), one entry per (feature, action). An action is
    a = mu(s) + z(s) @ (sigma * eps), eps a standard normal matrix held for several steps (sde_sample_freq), so
    that exploration is smooth in time; its distribution given s is the diagonal Gaussian with
    var(s) = (z(s)^2) @ sigma^2, which is what `forward` returns as (mean, log std): every Gaussian formula
    (log-probability, entropy, KL, Fisher metric) then holds as it is. z enters the variance detached (gSDE's
    default: the features learn from the mean alone)."""

    def __init__(self, in_dim: int, action_dim: int, init_log_std: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, action_dim)
        _small_init(self.linear)
        self.log_std = nn.Parameter(torch.full((in_dim, action_dim), float(init_log_std)))
        self.noise_shape = (in_dim, action_dim)  # one eps matrix per env

    def forward(self, features: Tensor) -> Params:
        variance = features.detach().pow(2) @ torch.exp(2 * self.log_std) + SDE_EPS
        return self.linear(features), 0.5 * torch.log(variance)

    def explore(self, features: Tensor, noise: Tensor) -> Tensor:
        """z @ (sigma * eps) per sample: features [B, F], noise [B, F, A] (or [1, F, A] for all)."""
        return (features.unsqueeze(-1) * (self.log_std.exp() * noise)).sum(-2)


class DiagGaussian(ActionDistribution):
    """Box: a diagonal Gaussian, with a state-independent log-std, or with `state_dependent` gSDE's (`SDEHead`).
    Sampled actions are clipped to the bounds only when sent to the env (`to_env`); log-probabilities use the
    unclipped sample."""

    def __init__(self, space: spaces.Box, state_dependent: bool = False) -> None:
        self.shape = tuple(space.shape)
        self.head_dim = int(np.prod(self.shape))
        self.low = space.low.reshape(-1).astype(np.float64)
        self.high = space.high.reshape(-1).astype(np.float64)
        self.dtype = space.dtype
        self.state_dependent = state_dependent
        self.held_noise = state_dependent  # gSDE's exploration matrix, held for sde_sample_freq steps

    def make_head(self, in_dim: int, init_log_std: float) -> Head:
        if self.state_dependent:
            return SDEHead(in_dim, self.head_dim, init_log_std)
        return _GaussianHead(in_dim, self.head_dim, init_log_std)

    def explore(self, params: Params, features: Tensor, noise: Tensor, head: Head) -> Tensor:
        if self.state_dependent:  # mu(s) + z(s) @ (sigma * eps)
            assert isinstance(head, SDEHead), "a state-dependent Gaussian's head is the SDEHead of make_head"
            return params[0] + head.explore(features, noise)
        return super().explore(params, features, noise, head)

    def numpy_explorer(self, head: Head) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        if not self.state_dependent:
            return super().numpy_explorer(head)
        assert isinstance(head, SDEHead), "a state-dependent Gaussian's head is the SDEHead of make_head"
        with torch.no_grad():
            sigma = head.log_std.exp().cpu().numpy()  # [F, A]
        return _SDEExplorer(sigma)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def shift(self, params: Params, noise: Tensor) -> Tensor:
        return params[1].exp() * noise  # sigma * eps

    def pick(self, shifted: Array) -> Array:
        return shifted  # mean + sigma * eps

    def log_prob(self, params: Params, actions: Tensor) -> Tensor:
        mean, log_std = params
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Params) -> Tensor:
        return (params[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, old: Params, new: Params) -> Tensor:
        (mu0, ls0), (mu1, ls1) = old, new
        var_ratio = torch.exp(2 * (ls0 - ls1))
        mean_term = (mu0 - mu1).pow(2) * torch.exp(-2 * ls1)
        return (ls1 - ls0 + 0.5 * (var_ratio + mean_term - 1)).sum(-1)

    def fisher_metric_product(self, params: Params, tangent: Params) -> Params:
        # Hessian of KL at new = old: 1/sigma^2 on the mean, 2 on the log-std, no cross terms.
        log_std = params[1]
        return torch.exp(-2 * log_std) * tangent[0], 2.0 * tangent[1]

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        # minimum/maximum rather than np.clip: the same values, a fraction of the call overhead per env step.
        arr = np.minimum(np.maximum(actions.astype(np.float64), self.low), self.high)
        return arr.reshape((-1, *self.shape)).astype(self.dtype)


def apply_mask(logits: Array, mask: Array) -> Array:
    """Masked actions' logits set to MASKED_LOGIT (numpy or torch): their probability is exactly 0, so they are
    never sampled or chosen, and they add nothing to log-probabilities, entropy, KL or the Fisher metric
    (p = 0), nor gradients (the logit is a constant)."""
    if isinstance(logits, Tensor):
        return torch.where(mask > 0, logits, torch.full_like(logits, MASKED_LOGIT))
    return np.where(mask > 0, logits, np.float32(MASKED_LOGIT))


def make_distribution(space: spaces.Space[Any], use_sde: bool = False) -> ActionDistribution:
    """The distribution family for an action space (with `use_sde`, gSDE's for a Box), or UnsupportedSpaceError
    naming it."""
    if use_sde and not isinstance(space, spaces.Box):
        raise ValueError(f"use_sde (state-dependent exploration) is for Box action spaces, not {space}")
    if isinstance(space, spaces.Discrete):
        return Categorical(space)
    if isinstance(space, spaces.Box):
        return DiagGaussian(space, use_sde)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiCategorical(space)
    if isinstance(space, spaces.MultiBinary):
        return Bernoulli(space)
    raise UnsupportedSpaceError(
        f"unsupported action space {space!r}: supported are Discrete, Box, MultiDiscrete and MultiBinary"
    )
