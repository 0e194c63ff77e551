"""The TRPO policy step as pure functions of flat parameter vectors (Schulman et al., 2015, section 6 and
appendix C).

    g        = grad L(theta) at theta_old                         (surrogate gradient)
    F v      = Hessian of mean KL(pi_old || pi_theta) at theta_old, times v   (Fisher-vector product)
    x        ~ F^-1 g                                             (conjugate gradient, x0 = 0; or K-FAC's F_kfac^-1 g,
                                                                   or CG preconditioned with it: kfac.py)
    beta     = sqrt(2 delta / x^T F x)                            (largest step on the quadratic KL model)
    theta    = theta_old + alpha^j beta x, first j in 0..J with  KL <= delta  and  L(theta) - L(theta_old) >= 0
    shared trunk, after the value fit moved theta to theta_v:      (keep_trust_region)
    theta    = theta + alpha^j (theta_v - theta), first j with the same test against pi_old; none: theta

Nothing here knows about environments or networks: callers pass closures over the batch. It sets no module's
parameters (the new theta is returned; update_rules.py writes it into the actor), takes no config and draws no
random numbers; of trpo it imports only the `Params` type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trpo.distributions import Params

Vector = Tensor  # a flat 1-D parameter vector
LinearOperator = Callable[[Vector], Vector]


# --- Fisher-vector products -------------------------------------------------------------------------------


def hessian_fvp(kl_fn: Callable[[Vector], Tensor], theta: Vector, damping: float) -> LinearOperator:
    """v -> (H + damping I) v with H the Hessian of the scalar kl_fn at theta, by double backprop.

    kl_fn(theta) is the mean KL(pi_old || pi_theta); its gradient vanishes at theta_old, so H = F there.
    The first-order graph is built once and reused for every product.
    """
    theta = theta.detach().requires_grad_(True)
    (grad_kl,) = torch.autograd.grad(kl_fn(theta), theta, create_graph=True)

    def product(v: Vector) -> Vector:
        (hv,) = torch.autograd.grad(grad_kl @ v, theta, retain_graph=True)
        return hv + damping * v

    return product


@dataclass(frozen=True)
class Linearization:
    """The distribution params at theta_old and the Jacobian J = d params / d theta as two linear maps."""

    params: Params  # detached, batch on dim 0
    jvp: Callable[[Vector], Params]  # v -> J v
    vjp: Callable[[Params], Vector]  # u -> J^T u


def autograd_linearization(params_fn: Callable[[Vector], Params], theta: Vector) -> Linearization:
    """J v and J^T u for any differentiable params_fn, from one forward pass: J^T u from the retained graph,
    J v by differentiating the linear map u -> J^T u with respect to u ("double vjp").

    Each product differentiates a scalar, <outputs, u> or <J^T u, v>, rather than passing grad_outputs: the
    gradients are the same, bit for bit, but torch imports sympy (~40 MiB) the first time grad_outputs are given.
    """
    theta = theta.detach().requires_grad_(True)
    outputs = params_fn(theta)
    dummies = tuple(torch.zeros_like(o, requires_grad=True) for o in outputs)
    (jt_dummy,) = torch.autograd.grad(_inner(outputs, dummies), theta, create_graph=True)

    def jvp(v: Vector) -> Params:
        return torch.autograd.grad(jt_dummy @ v, dummies, retain_graph=True)

    def vjp(u: Params) -> Vector:
        return torch.autograd.grad(_inner(outputs, u), theta, retain_graph=True)[0]

    return Linearization(tuple(o.detach() for o in outputs), jvp, vjp)


def _inner(a: Params, b: Params) -> Tensor:
    """sum_i <a_i, b_i>: its gradient in a is b, exactly."""
    return sum(((x * y).sum() for x, y in zip(a, b, strict=True)), torch.zeros((), device=a[0].device))


def gauss_newton_fvp(
    lin: Linearization,
    metric_product: Callable[[Params, Params], Params],
    damping: float,
) -> LinearOperator:
    """v -> (J^T M J / n + damping I) v: the Fisher matrix in its Gauss-Newton form, with M the analytic Fisher
    metric of the distribution family at the n samples' params. Equals the KL Hessian at theta_old."""
    n = lin.params[0].shape[0]

    def product(v: Vector) -> Vector:
        m_jv = tuple(t / n for t in metric_product(lin.params, lin.jvp(v)))
        return lin.vjp(m_jv) + damping * v

    return product


# --- conjugate gradient ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CGResult:
    x: Vector
    iterations: int
    residual_norm: float  # ||b - A x|| at exit


def conjugate_gradient(avp: LinearOperator, b: Vector, max_iters: int, tol: float = 1e-10,
                       precondition: LinearOperator | None = None) -> CGResult:
    """Solve A x = b for symmetric positive-definite A given only v -> A v. Starts at x0 = 0 (deterministic);
    stops after max_iters or once ||r||^2 < tol.

    With `precondition` (v -> P^-1 v, P symmetric positive definite and close to A: K-FAC's blocks) it is
    preconditioned CG: the same iterates in the variable P^(1/2) x, which converge in fewer iterations the closer
    P^-1 A is to I (in one when P = A). Without, the operations are plain CG's, in the same order."""
    x = torch.zeros_like(b)
    r = b.clone()  # r = b - A x0 = b
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rz = r @ z
    rr = rz if precondition is None else r @ r
    iterations = 0
    for _ in range(max_iters):
        if rr < tol:
            break
        ap = avp(p)
        pap = p @ ap
        if not torch.isfinite(pap) or pap <= 0:
            break  # A is not positive definite along p; keep the iterate so far
        alpha = rz / pap
        x = x + alpha * p
        r = r - alpha * ap
        z = r if precondition is None else precondition(r)
        rz_new = r @ z
        rr = rz_new if precondition is None else r @ r
        p = z + (rz_new / rz) * p
        rz = rz_new
        iterations += 1
        if precondition is not None and not (torch.isfinite(rz) and rz > 0):
            break  # P^-1 is not positive definite along r (or r = 0 exactly)
    return CGResult(x=x, iterations=iterations, residual_norm=float(rr.sqrt()))


# --- line search and the full step ------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """Outcome of one policy step; every field is logged."""

    theta: Vector  # the new parameters (theta_old itself, untouched, when rejected or skipped)
    accepted: bool
    reason: str  # 'accepted' | 'npg' | 'line_search_failed' | 'non_finite' | 'xFx_nonpositive' | 'zero_gradient'
    kl: float  # exact mean KL(old || new) of the returned theta (0 when theta_old is kept)
    surrogate_gain: float  # L(theta) - L(theta_old), exact
    expected_gain: float  # g . (theta - theta_old) of the last candidate considered (the linear model)
    line_search_steps: int  # backtracks j of the last candidate considered
    step_fraction: float  # alpha^j
    cg_iterations: int
    cg_residual: float
    xFx: float  # noqa: N815 - the paper's x^T F x
    beta: float  # sqrt(2 delta / x^T F x)
    grad_norm: float


def backtracking_line_search(
    evaluate: Callable[[Vector], tuple[float, float]],
    theta_old: Vector,
    full_step: Vector,
    max_kl: float,
    ratio: float,
    max_backtracks: int,
) -> tuple[Vector | None, int, float, float]:
    """Try theta_old + ratio^j * full_step for j = 0..max_backtracks; evaluate(theta) -> (kl, gain).

    Returns (theta or None, j, kl, gain) for the first candidate with finite kl <= max_kl and gain >= 0, or
    (None, last j, its kl, its gain) when none passes.
    """
    kl, gain, j = math.nan, math.nan, 0
    for j in range(max_backtracks + 1):
        candidate = theta_old + (ratio**j) * full_step
        kl, gain = evaluate(candidate)
        if math.isfinite(kl) and math.isfinite(gain) and kl <= max_kl and gain >= 0:
            return candidate, j, kl, gain
    return None, j, kl, gain


def trpo_step(
    theta_old: Vector,
    grad: Vector,
    fvp: LinearOperator,
    evaluate: Callable[[Vector], tuple[float, float]],
    max_kl: float,
    cg_iters: int,
    cg_tol: float,
    backtrack_ratio: float,
    max_backtracks: int,
    line_search: bool = True,
    precondition: LinearOperator | None = None,
    direction: LinearOperator | None = None,
) -> StepResult:
    """One TRPO step (line_search=True) or natural policy gradient step (line_search=False).

    evaluate(theta) = (mean KL(pi_old || pi_theta), L(theta)), both exact on the batch (one forward pass).
    Any non-finite quantity or x^T F x <= 0 skips the update: theta_old is returned as is.
    x ~ F^-1 g is CG's, preconditioned with `precondition` if given, or `direction(g)` (K-FAC's F_kfac^-1 g: no
    CG, and fvp is used once, for x^T F x; the residual reported is min_c ||g - c F x||: of x's direction, whose
    length beta sets).
    """
    grad_norm = float(grad.norm())

    def keep(reason: str, **extra: float) -> StepResult:
        base = dict(kl=0.0, surrogate_gain=0.0, expected_gain=0.0, line_search_steps=0, step_fraction=0.0,
                    cg_iterations=0, cg_residual=math.nan, xFx=math.nan, beta=0.0)
        base.update(extra)
        return StepResult(theta=theta_old, accepted=False, reason=reason, grad_norm=grad_norm, **base)  # type: ignore[arg-type]

    if not math.isfinite(grad_norm):
        return keep("non_finite")
    if grad_norm == 0.0:
        return keep("zero_gradient")

    if direction is None:
        cg = conjugate_gradient(fvp, grad, cg_iters, cg_tol, precondition)
        x = cg.x
        xfx = float(x @ fvp(x))
    else:
        x = direction(grad)
        fx = fvp(x)
        xfx = float(x @ fx)
        scale = (grad @ fx) / (fx @ fx)  # beta sets the step's length: the residual of x's direction alone
        cg = CGResult(x=x, iterations=0, residual_norm=float((grad - scale * fx).norm()))
    cg_info = dict(cg_iterations=cg.iterations, cg_residual=cg.residual_norm, xFx=xfx)
    if not math.isfinite(xfx) or not bool(torch.isfinite(x).all()):
        return keep("non_finite", **cg_info)
    if xfx <= 0:
        return keep("xFx_nonpositive", **cg_info)

    beta = math.sqrt(2 * max_kl / xfx)
    full_step = beta * x
    full_expected = float(grad @ full_step)
    surrogate_old = evaluate(theta_old)[1]

    def kl_and_gain(theta: Vector) -> tuple[float, float]:
        kl, surrogate = evaluate(theta)
        return kl, surrogate - surrogate_old

    if not line_search:
        theta_new = theta_old + full_step
        kl, gain = kl_and_gain(theta_new)
        if not (math.isfinite(kl) and math.isfinite(gain)):
            return keep("non_finite", beta=beta, **cg_info)
        return StepResult(theta_new, True, "npg", kl, gain, full_expected, 0, 1.0, cg.iterations,
                          cg.residual_norm, xfx, beta, grad_norm)

    theta_found, j, kl, gain = backtracking_line_search(
        kl_and_gain, theta_old, full_step, max_kl, backtrack_ratio, max_backtracks
    )
    fraction = backtrack_ratio**j
    if theta_found is None:
        return keep("line_search_failed", expected_gain=full_expected * fraction, line_search_steps=j,
                    step_fraction=fraction, beta=beta, **cg_info)
    return StepResult(theta_found, True, "accepted", kl, gain, full_expected * fraction, j, fraction,
                      cg.iterations, cg.residual_norm, xfx, beta, grad_norm)


@dataclass(frozen=True)
class KeptFit:
    """What keep_trust_region kept of a shared trunk's value-fit change."""

    theta: Vector  # the actor's parameters to keep
    fraction: float  # ratio^j of the change kept; 0.0: undone
    backtracks: int  # j of the last candidate tried
    kl: float  # its KL (NaN where undone: the policy step's own, measured by the caller)


def keep_trust_region(
    evaluate: Callable[[Vector], tuple[float, float]],
    theta_policy: Vector,
    theta_fitted: Vector,
    max_kl: float,
    floor: float,
    ratio: float,
    max_backtracks: int,
) -> KeptFit:
    """A shared trunk: the value fit moved the actor from theta_policy (the policy step's result, inside the trust
    region) to theta_fitted. Keep theta_policy + ratio^j (theta_fitted - theta_policy) for the first j in
    0..max_backtracks whose evaluate(theta) = (exact KL(pi_old || pi_theta), L(theta)) has KL <= max_kl and
    L >= floor; none: theta_policy itself, bit for bit. The bound holds by construction at the j -> infinity end,
    so the update as a whole stays in the trust region whatever the fit did (the line search's test, again)."""
    found, j, kl, _ = backtracking_line_search(
        lambda theta: _minus(evaluate(theta), floor), theta_policy, theta_fitted - theta_policy, max_kl, ratio,
        max_backtracks)
    if found is None:
        return KeptFit(theta_policy, 0.0, j, math.nan)
    return KeptFit(found, ratio**j, j, kl)


def _minus(kl_and_surrogate: tuple[float, float], floor: float) -> tuple[float, float]:
    kl, surrogate = kl_and_surrogate
    return kl, surrogate - floor
