"""The policy-step math against independent computations: torch.linalg.solve for CG, torch.func.hessian of the
mean KL for both Fisher-vector products (every distribution family), and the line search's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.func import functional_call, hessian

from trpo.distributions import make_distribution
from trpo.networks import Actor
from trpo.trust_region import (
    autograd_linearization,
    backtracking_line_search,
    conjugate_gradient,
    gauss_newton_fvp,
    hessian_fvp,
    trpo_step,
)

# Floats through kernels that numpy and torch pick per CPU: scripts/dev.py test runs these again with others forced.
pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("float64")]


def random_spd(n: int, seed: int, cond: float = 50.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    eigs = torch.logspace(0, math.log10(cond), n)
    return q @ torch.diag(eigs) @ q.T


@pytest.mark.parametrize("n,seed", [(3, 0), (10, 1), (40, 2)])
def test_cg_matches_linalg_solve_on_spd(n: int, seed: int) -> None:
    a = random_spd(n, seed)
    assert torch.linalg.eigvalsh(a).min() > 0  # really positive definite (sb3-contrib's test matrix is not)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 100))
    # Exact arithmetic needs n iterations; in floating point allow more and stop on the residual.
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=3 * n, tol=1e-26)
    expected = torch.linalg.solve(a, b)
    torch.testing.assert_close(result.x, expected, rtol=1e-8, atol=1e-8)
    assert result.residual_norm == pytest.approx(float((b - a @ result.x).norm()), abs=1e-8)


def test_cg_is_deterministic_and_stops_early_on_tolerance() -> None:
    a = torch.eye(5) * 2.0
    b = torch.arange(1.0, 6.0)
    first = conjugate_gradient(lambda v: a @ v, b, max_iters=25, tol=1e-12)
    second = conjugate_gradient(lambda v: a @ v, b, max_iters=25, tol=1e-12)
    assert first.iterations == 1  # a multiple of I is solved in one step from x0 = 0
    assert torch.equal(first.x, second.x)
    torch.testing.assert_close(first.x, b / 2)


def test_cg_respects_the_iteration_cap() -> None:
    a = random_spd(30, 3, cond=1e4)
    b = torch.ones(30)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=4, tol=0.0)
    assert result.iterations == 4
    assert result.residual_norm > 1e-6


# --- Fisher-vector products vs torch.func.hessian ---------------------------------------------------------

SPACES = {
    "categorical": spaces.Discrete(4),
    "gaussian": spaces.Box(-1.0, 1.0, (3,)),
    "multicategorical": spaces.MultiDiscrete([3, 2, 4]),
    "bernoulli": spaces.MultiBinary(3),
}


def tiny_problem(space: spaces.Space, seed: int = 0, activation: str = "tanh"):
    torch.manual_seed(seed)
    dist = make_distribution(space)
    actor = Actor(5, dist, (6, 4), activation, init_log_std=-0.3)
    for p in actor.parameters():  # move away from the near-uniform init so M is not trivial
        p.data.add_(0.5 * torch.randn_like(p))
    obs = torch.randn(11, 5)
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for _, p in actor.named_parameters()]
    theta_old = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])

    def params_fn(theta: torch.Tensor, x: torch.Tensor = obs):
        out, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            numel = int(np.prod(shape))
            out[name] = theta[offset : offset + numel].view(shape)
            offset += numel
        return functional_call(actor, out, (x,))

    old = tuple(p.detach() for p in params_fn(theta_old))

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        return dist.kl(old, params_fn(theta)).mean()

    return dist, theta_old, params_fn, mean_kl


@pytest.mark.parametrize("name", list(SPACES))
@pytest.mark.parametrize("form,activation", [("hessian", "tanh"), ("gauss_newton", "tanh"), ("gauss_newton", "relu")])
def test_fisher_vector_product_matches_hessian_of_mean_kl(name: str, form: str, activation: str) -> None:
    dist, theta_old, params_fn, mean_kl = tiny_problem(SPACES[name], activation=activation)
    damping = 0.05
    h = hessian(mean_kl)(theta_old)
    if form == "hessian":
        fvp = hessian_fvp(mean_kl, theta_old, damping)
    else:
        fvp = gauss_newton_fvp(autograd_linearization(params_fn, theta_old), dist.fisher_metric_product, damping)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = torch.randn(theta_old.shape, generator=gen)
        torch.testing.assert_close(fvp(v), h @ v + damping * v, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(SPACES))
def test_fisher_metric_is_the_hessian_of_kl_in_distribution_params(name: str) -> None:
    dist, theta_old, params_fn, *_ = tiny_problem(SPACES[name])
    params = tuple(p.detach()[:1] for p in params_fn(theta_old))  # one sample
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def kl_of_flat(f: torch.Tensor) -> torch.Tensor:
        parts = torch.split(f, sizes)
        new = tuple(part.view(p.shape) for part, p in zip(parts, params, strict=True))
        return dist.kl(params, new).sum()

    m = hessian(kl_of_flat)(flat)
    tangent_flat = torch.randn(flat.shape, generator=torch.Generator().manual_seed(3))
    tangent = tuple(t.view(p.shape) for t, p in zip(torch.split(tangent_flat, sizes), params, strict=True))
    got = torch.cat([t.reshape(-1) for t in dist.fisher_metric_product(params, tangent)])
    torch.testing.assert_close(got, m @ tangent_flat, rtol=1e-8, atol=1e-10)


# --- the step and the line search -------------------------------------------------------------------------


def quadratic_problem(n: int = 6, seed: int = 0):
    """L(theta) = g.(theta - theta0) - 0.5 (theta-theta0)^T C (theta-theta0); KL = 0.5 d^T F d."""
    f = random_spd(n, seed, cond=10.0)
    c = random_spd(n, seed + 1, cond=5.0) * 0.1
    g = torch.randn(n, generator=torch.Generator().manual_seed(seed + 2))
    theta0 = torch.randn(n, generator=torch.Generator().manual_seed(seed + 3))

    def surrogate(theta: torch.Tensor) -> float:
        d = theta - theta0
        return float(g @ d - 0.5 * d @ c @ d)

    def kl(theta: torch.Tensor) -> float:
        d = theta - theta0
        return float(0.5 * d @ f @ d)

    return f, g, theta0, surrogate, kl


def both(surrogate, kl):
    """The (KL, L) evaluation trpo_step expects."""
    return lambda theta: (kl(theta), surrogate(theta))


def test_trpo_step_lands_on_the_trust_region_boundary_of_a_quadratic_kl() -> None:
    f, g, theta0, surrogate, kl = quadratic_problem()
    delta = 0.01
    res = trpo_step(theta0, g, lambda v: f @ v, both(surrogate, kl), delta, cg_iters=20, cg_tol=1e-20,
                    backtrack_ratio=0.8, max_backtracks=10)
    assert res.accepted and res.reason == "accepted"
    x = torch.linalg.solve(f, g)
    assert res.xFx == pytest.approx(float(x @ f @ x), rel=1e-8)
    assert res.beta == pytest.approx(math.sqrt(2 * delta / float(x @ f @ x)), rel=1e-8)
    # With an exactly quadratic KL the full step has KL = delta (up to rounding), so j = 0 or 1.
    assert res.kl <= delta
    assert res.line_search_steps <= 1
    assert res.surrogate_gain >= 0


def test_line_search_that_must_fail_returns_theta_old_exactly() -> None:
    f, g, theta0, _, kl = quadratic_problem()
    original = theta0.clone()
    res = trpo_step(theta0, g, lambda v: f @ v, both(lambda th: -float((th - theta0).norm()), kl), 0.01, 20, 1e-20,
                    0.8, 10)
    assert not res.accepted and res.reason == "line_search_failed"
    assert res.theta is theta0 and torch.equal(res.theta, original)
    assert res.line_search_steps == 10


def test_line_search_takes_the_first_candidate_that_passes() -> None:
    theta0, step = torch.zeros(2), torch.ones(2)
    seen: list[float] = []

    def evaluate(theta: torch.Tensor) -> tuple[float, float]:
        seen.append(float(theta[0]))
        return float(theta[0]), 1.0  # KL = step fraction

    theta, j, kl, _gain = backtracking_line_search(evaluate, theta0, step, max_kl=0.3, ratio=0.5, max_backtracks=10)
    assert j == 2 and kl == 0.25 and theta is not None
    assert seen == [1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "fvp,reason",
    [(lambda v: -v, "xFx_nonpositive"), (lambda v: v * float("nan"), "non_finite")],
)
def test_bad_curvature_skips_the_update(fvp, reason: str) -> None:
    _, g, theta0, surrogate, kl = quadratic_problem()
    res = trpo_step(theta0, g, fvp, both(surrogate, kl), 0.01, 10, 1e-10, 0.8, 10)
    assert not res.accepted and res.reason == reason and res.theta is theta0


def test_non_finite_gradient_skips_the_update() -> None:
    f, g, theta0, surrogate, kl = quadratic_problem()
    g = g.clone()
    g[0] = float("inf")
    res = trpo_step(theta0, g, lambda v: f @ v, both(surrogate, kl), 0.01, 10, 1e-10, 0.8, 10)
    assert not res.accepted and res.reason == "non_finite" and res.theta is theta0


def test_natural_policy_gradient_takes_the_full_step_without_checks() -> None:
    f, g, theta0, _, kl = quadratic_problem()
    delta = 0.01
    # A surrogate that always decreases: TRPO would reject, NPG must still take beta * x.
    res = trpo_step(theta0, g, lambda v: f @ v, both(lambda th: -float((th - theta0).norm()), kl), delta, 50, 1e-24,
                    0.8, 10, line_search=False)
    assert res.accepted and res.reason == "npg" and res.step_fraction == 1.0
    x = torch.linalg.solve(f, g)
    expected = theta0 + math.sqrt(2 * delta / float(x @ f @ x)) * x
    torch.testing.assert_close(res.theta, expected, rtol=1e-7, atol=1e-9)
    assert res.surrogate_gain < 0
