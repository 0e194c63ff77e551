"""K-FAC (trpo/kfac.py) against independent computations: on tiny Linear and Conv2d actors with one sample, each
layer's factored block G (x) A equals the block of the Fisher built explicitly (the Hessian of the mean KL, or J^T M J
with J by torch.func.jacrev and M the Hessian of the KL in the distribution's params), where the factorization is
exact; a convolution with several output positions has the factors of their definition (patches cut out by hand,
output gradients through the rest of the network by jacrev); a batch's factors are the mean of its samples'; the
damped inverse is the inverse of the damped factors; preconditioned CG converges in one step with the exact inverse;
and the policy step with K-FAC never accepts a KL above max_kl (a property over random nets and batches), leaves the
parameters bit-identical when it fails, and learns CartPole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as dists
import trpo_testenvs  # noqa: F401 - registers the test envs
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trust_region import random_spd
from torch.func import functional_call, hessian, jacrev
from trpo_testenvs import MaskedChoiceEnv, PixelSideEnv

import trpo.kfac as kfac_module
import trpo.kfac_conv as kfac_conv
from trpo import TRPO, ConfigError, TRPOConfig
from trpo.distributions import make_distribution
from trpo.encoders import ImageLayout
from trpo.kfac import KFAC, ExactFisher, LayerwiseFisher, kfac
from trpo.kfac_conv import ConvOutput, conv_input_moment, kept_patches, patches
from trpo.networks import Actor
from trpo.trust_region import autograd_linearization, conjugate_gradient, gauss_newton_fvp
from trpo.update_rules import PolicyBatch, TrustRegionRule

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("float64")]

SPACES = {
    "categorical": (spaces.Discrete(4), False),
    "gaussian": (spaces.Box(-1.0, 1.0, (3,)), False),
    "gsde": (spaces.Box(-1.0, 1.0, (3,)), True),
    "multicategorical": (spaces.MultiDiscrete([3, 2]), False),
    "bernoulli": (spaces.MultiBinary(3), False),
}
IMAGE = ImageLayout(channels=2, height=10, width=10, channels_last=False, scale=1.0)  # paper CNN: 4x4, then 1x1


def tiny_actor(space: spaces.Space, sde: bool = False, image: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    dist = make_distribution(space, sde)
    obs_dim = IMAGE.size if image else 5
    actor = Actor(obs_dim, dist, (6, 4), "tanh", init_log_std=-0.3, image=IMAGE if image else None)
    for p in actor.parameters():  # away from the near-uniform init, so that M and the factors are not trivial
        p.data.add_(0.3 * torch.randn_like(p))
    return dist, actor, obs_dim


def flat(actor: Actor):
    named = [(n, p) for n, p in actor.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def params_fn(th: torch.Tensor, obs: torch.Tensor):
        tensors, offset = {}, 0
        for name, p in named:
            tensors[name] = th[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return functional_call(actor, tensors, (obs,))

    return theta, params_fn


def explicit_fisher(dist, params_fn, theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """(1/n) sum_i J_i^T M_i J_i, J by jacrev of the params in theta, M_i the Hessian of KL(p_i || .) in p_i."""
    old = tuple(p.detach() for p in params_fn(theta, obs))
    sizes = [p.shape[-1] for p in old]
    jac = jacrev(lambda th: torch.cat(params_fn(th, obs), -1))(theta)  # [n, D, P]
    total = torch.zeros(theta.numel(), theta.numel())
    for i in range(obs.shape[0]):
        one = tuple(p[i : i + 1] for p in old)

        def kl(f: torch.Tensor, one=one) -> torch.Tensor:
            new = tuple(part.view(1, -1) for part in torch.split(f, sizes))
            return dist.kl(one, new).sum()

        m = hessian(kl)(torch.cat([p.reshape(-1) for p in one]))
        total += jac[i].T @ m @ jac[i]
    return total / obs.shape[0]


def layer_index(block) -> torch.Tensor:
    """theta's indices of [W | b] read row by row (a convolution's W as [out, C_in kh kw])."""
    out = block.g.shape[0]
    w = torch.arange(block.weight.start, block.weight.stop).view(out, -1)
    return torch.cat([w, torch.arange(block.bias.start, block.bias.stop).view(out, 1)], 1).reshape(-1)


@pytest.mark.parametrize("name", list(SPACES))
def test_linear_blocks_equal_the_fisher_of_one_sample(name: str) -> None:
    space, sde = SPACES[name]
    dist, actor, obs_dim = tiny_actor(space, sde)
    theta, params_fn = flat(actor)
    obs = torch.randn(1, obs_dim)
    old = tuple(p.detach() for p in params_fn(theta, obs))
    fisher = hessian(lambda th: dist.kl(old, params_fn(th, obs)).mean())(theta)  # the KL's Hessian: F
    blocks = kfac(actor, dist, obs, damping=0.1)
    assert [b.name for b in blocks.kron] == ["body.0", "body.2", "head.linear"]
    for block in blocks.kron:
        idx = layer_index(block)
        exact = fisher[idx][:, idx]
        assert float(exact.abs().max()) > 1e-3  # not a block of zeros
        torch.testing.assert_close(torch.kron(block.g, block.a), exact, rtol=1e-9, atol=1e-12)
    assert [b.name for b in blocks.exact] == ([] if name not in ("gaussian", "gsde") else ["head.log_std"])
    for eblock in blocks.exact:  # the log std's exact block: for any batch, here one sample
        idx = torch.arange(eblock.index.start, eblock.index.stop).view(eblock.shape)
        columns = [idx[:, a] for a in range(idx.shape[1])] if eblock.columns else [idx]
        for matrix, col in zip(eblock.matrices, columns, strict=True):
            torch.testing.assert_close(matrix, fisher[col][:, col], rtol=1e-9, atol=1e-12)


def _patches(x: torch.Tensor, kernel: int, stride: int) -> list[torch.Tensor]:
    """Every patch of x [C, H, W] the convolution sees, cut out by hand (row-major positions), as [C k k] + [1]."""
    rows = (x.shape[1] - kernel) // stride + 1
    cols = (x.shape[2] - kernel) // stride + 1
    return [torch.cat([x[:, r * stride : r * stride + kernel, c * stride : c * stride + kernel].reshape(-1),
                       torch.ones(1)]) for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize("name", ["categorical", "bernoulli"])
def test_conv_blocks_are_exact_where_kfc_is_and_follow_the_definition_elsewhere(name: str) -> None:
    space, _ = SPACES[name]
    dist, actor, obs_dim = tiny_actor(space, image=True)
    theta, params_fn = flat(actor)
    obs = torch.rand(1, obs_dim)
    fisher = explicit_fisher(dist, params_fn, theta, obs)
    blocks = kfac(actor, dist, obs, damping=0.1)
    names = [b.name for b in blocks.kron]
    assert names == ["body.convs.0", "body.convs.2", "body.fc", "head.linear"]
    # One output position (the second convolution) and the Linears: KFC's block is the Fisher's block.
    for block in blocks.kron[1:]:
        idx = layer_index(block)
        torch.testing.assert_close(torch.kron(block.g, block.a), fisher[idx][:, idx], rtol=1e-9, atol=1e-12)
    # The first convolution has T = 16 positions: A = sum_t abar_t abar_t^T and G = (1/T) sum_t g_t^T M g_t, g_t the
    # Jacobian of the params in the output at position t: both by hand.
    conv1, conv2 = actor.body.convs[0], actor.body.convs[2]
    x = obs.view(IMAGE.channels, IMAGE.height, IMAGE.width)
    patches = _patches(x, 4, 2)
    a_def = sum(torch.outer(p, p) for p in patches)
    s1 = conv1(x.unsqueeze(0)).detach()  # [1, 16, 4, 4]

    def params_from_s1(s: torch.Tensor):
        h = torch.relu(actor.body.fc(torch.relu(conv2(torch.relu(s))).flatten(1)))
        return actor.head(h)

    params = tuple(p.detach() for p in params_from_s1(s1))
    jac = jacrev(lambda s: torch.cat(params_from_s1(s), -1))(s1)[0, :, 0]  # [D, 16, 4, 4]
    m = hessian(lambda f: dist.kl(params, (f.view(1, -1),)).sum())(params[0].reshape(-1))
    per_position = jac.reshape(jac.shape[0], 16, -1)  # [D, C_out, T]
    g_def = sum(per_position[:, :, t].T @ m @ per_position[:, :, t] for t in range(16)) / 16
    torch.testing.assert_close(blocks.kron[0].a, a_def, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(blocks.kron[0].g, g_def, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,image", [("categorical", True), ("gaussian", False), ("gsde", False)])
def test_a_batchs_factors_are_the_mean_of_its_samples(name: str, image: bool) -> None:
    space, sde = SPACES[name]
    dist, actor, obs_dim = tiny_actor(space, sde, image=image)
    obs = torch.rand(5, obs_dim)
    whole = kfac(actor, dist, obs, damping=0.1)
    singles = [kfac(actor, dist, obs[i : i + 1], damping=0.1) for i in range(5)]
    for j, block in enumerate(whole.kron):
        torch.testing.assert_close(block.a, sum(s.kron[j].a for s in singles) / 5)
        torch.testing.assert_close(block.g, sum(s.kron[j].g for s in singles) / 5)
    for j, eblock in enumerate(whole.exact):
        torch.testing.assert_close(eblock.matrices, sum(s.exact[j].matrices for s in singles) / 5)


def test_the_damped_inverse_inverts_the_damped_factors() -> None:
    dist, actor, obs_dim = tiny_actor(*SPACES["gsde"])
    obs = torch.randn(7, obs_dim)
    damping = 0.05
    blocks = kfac(actor, dist, obs, damping)
    theta, _ = flat(actor)
    dense = torch.zeros(theta.numel(), theta.numel())
    for block in blocks.kron:
        # Martens & Grosse's pi: the factors' mean eigenvalues, sqrt(lambda) split between them.
        pi = math.sqrt((block.a.trace() / block.a.shape[0]) / (block.g.trace() / block.g.shape[0]))
        a = block.a + pi * math.sqrt(damping) * torch.eye(block.a.shape[0])
        g = block.g + math.sqrt(damping) / pi * torch.eye(block.g.shape[0])
        idx = layer_index(block)
        dense[idx[:, None], idx[None, :]] = torch.kron(g, a)
    for eblock in blocks.exact:
        idx = torch.arange(eblock.index.start, eblock.index.stop).view(eblock.shape)
        for a, matrix in enumerate(eblock.matrices):
            dense[idx[:, a, None], idx[None, :, a]] = matrix + damping * torch.eye(matrix.shape[0])
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(blocks.inverse(v), torch.linalg.solve(dense, v), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(blocks.inverse(dense @ v), v, rtol=1e-8, atol=1e-10)


def test_pcg_with_the_exact_inverse_converges_in_one_step() -> None:
    a = random_spd(30, 5, cond=1e4)
    b = torch.randn(30, generator=torch.Generator().manual_seed(6))
    plain = conjugate_gradient(lambda v: a @ v, b, max_iters=5, tol=1e-20)
    pre = conjugate_gradient(lambda v: a @ v, b, max_iters=5, tol=1e-20,
                             precondition=lambda r: torch.linalg.solve(a, r))
    assert pre.iterations == 1 and plain.iterations == 5
    torch.testing.assert_close(pre.x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)
    assert pre.residual_norm < 1e-9 < plain.residual_norm


def test_pcg_with_kfac_solves_the_damped_fisher_system() -> None:
    """Any SPD preconditioner leaves CG's solution as it is: with K-FAC's blocks, (F + lambda I)^-1 g."""
    dist, actor, obs_dim = tiny_actor(*SPACES["categorical"])
    theta, params_fn = flat(actor)
    obs = torch.randn(9, obs_dim)
    damping = 0.1
    f = explicit_fisher(dist, params_fn, theta, obs) + damping * torch.eye(theta.numel())
    g = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2))
    blocks = kfac(actor, dist, obs, damping)
    pre = conjugate_gradient(lambda v: f @ v, g, max_iters=3 * theta.numel(), tol=1e-24, precondition=blocks.inverse)
    torch.testing.assert_close(pre.x, torch.linalg.solve(f, g), rtol=1e-7, atol=1e-9)


def test_kfac_refuses_recurrent_actors_and_configs_say_so_in_one_line() -> None:
    dist = make_distribution(spaces.Discrete(3))
    actor = Actor(4, dist, (5,), "tanh", 0.0, recurrent="gru", recurrent_hidden=3)
    with pytest.raises(ValueError, match="feed-forward"):
        kfac(actor, dist, torch.randn(2, 4), 0.1)
    with pytest.raises(ConfigError, match="feed-forward") as info:
        TRPOConfig(natural_gradient="kfac", recurrent="lstm")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cg_damping > 0"):
        TRPOConfig(natural_gradient="kfac_cg", cg_damping=0.0)
    assert TRPOConfig.from_dict({"natural_gradient": "kfac_cg"}).natural_gradient == "kfac_cg"
    with pytest.raises(ConfigError, match="natural_gradient"):
        TRPOConfig.from_dict({"natural_gradient": "newton"})


@pytest.mark.parametrize("name,kind", [(n, k) for n in (*SPACES, "image", "image_pad") for k in ("layerwise", "exact")]
                         + [("image", "unkept_patches"), ("image_pad", "unkept_patches")])
def test_the_exact_fisher_equals_the_gauss_newton_product(monkeypatch, name: str, kind: str) -> None:
    """LayerwiseFisher (from the output gradients kfac() kept) and ExactFisher (its fallback above GRADIENT_LIMIT or
    where a convolution's patches were not kept: J v forward-mode, J^T u by one backward) against trust_region's
    double-vjp product: the same (F + lambda I) v to float64 rounding, and v^T (F + lambda I) v."""
    if kind == "exact":
        monkeypatch.setattr(kfac_module, "GRADIENT_LIMIT", 0)
    elif kind == "unkept_patches":
        monkeypatch.setattr(kfac_conv, "PATCH_LIMIT", 0)  # the first convolution's patches are cut per chunk
    space, sde = SPACES["categorical" if name.startswith("image") else name]
    dist, actor, obs_dim = tiny_actor(space, sde, image=name.startswith("image"))
    if name == "image_pad":  # 4 x 5 positions, then a convolution with one that does not cover its input
        actor.body.convs[0] = torch.nn.Conv2d(2, 16, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1), bias=False)
    theta, params_fn = flat(actor)
    obs = torch.rand(7, obs_dim)
    lin = autograd_linearization(lambda th: params_fn(th, obs), theta)
    fvp = gauss_newton_fvp(lin, dist.fisher_metric_product, 0.1)
    fisher = kfac(actor, dist, obs, damping=0.1).fisher
    assert type(fisher) is (LayerwiseFisher if kind == "layerwise" else ExactFisher)
    for seed in range(3):
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed))
        expected = fvp(v)
        torch.testing.assert_close(fisher.product(v), expected, rtol=1e-12, atol=1e-12)
        assert float(fisher.quadratic(v)) == pytest.approx(float(v @ expected), rel=1e-12)
    explicit = explicit_fisher(dist, params_fn, theta, obs) + 0.1 * torch.eye(theta.numel())  # a third opinion
    torch.testing.assert_close(fisher.product(v), explicit @ v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("natural_gradient", ["cg", "kfac_cg"])
@pytest.mark.parametrize("name", [*SPACES, "image"])
def test_cg_on_layerwise_products_takes_the_gauss_newton_step(name: str, natural_gradient: str) -> None:
    """fisher_product 'layerwise' (CG's products from K-FAC's kept output gradients) against 'gauss_newton' on the same
    actor and batch: the same CG iterations, residual, beta and new parameters, to float64 rounding."""
    space, sde = SPACES["categorical" if name == "image" else name]
    dist, actor, obs_dim = tiny_actor(space, sde, image=name == "image")
    batch = random_batch(dist, actor, obs_dim, 24, 2)
    state = {k: v.clone() for k, v in actor.state_dict().items()}
    steps, thetas = {}, {}
    for product in ("gauss_newton", "layerwise"):
        actor.load_state_dict(state)
        cfg = TRPOConfig(natural_gradient=natural_gradient, fisher_product=product, cg_iters=8, max_kl=0.05)
        steps[product] = TrustRegionRule(cfg, dist).update(actor, batch)
        thetas[product] = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    ours, theirs = steps["layerwise"], steps["gauss_newton"]
    assert ours["step_accepted"] and ours["cg_iterations"] == theirs["cg_iterations"]
    for key in ("beta", "xFx", "cg_residual", "surrogate_gain"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-8, abs=1e-12)
    torch.testing.assert_close(thetas["layerwise"], thetas["gauss_newton"], rtol=1e-9, atol=1e-11)


def test_layerwise_products_need_no_damping_and_refuse_recurrent_actors() -> None:
    """CG on layerwise products with cg_damping 0 (K-FAC's factors are never inverted); a recurrent actor is refused in
    one line."""
    dist, actor, obs_dim = tiny_actor(*SPACES["gaussian"])
    batch = random_batch(dist, actor, obs_dim, 16, 1)
    stats = TrustRegionRule(TRPOConfig(fisher_product="layerwise", cg_damping=0.0), dist).update(actor, batch)
    assert stats["step_accepted"] and math.isfinite(stats["beta"])
    with pytest.raises(ConfigError, match="feed-forward") as info:
        TRPOConfig(fisher_product="layerwise", recurrent="gru")
    assert "\n" not in str(info.value)


CONVS = [dict(kernel_size=3, stride=1), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
         dict(kernel_size=(5, 6), stride=3), dict(kernel_size=2, stride=2, bias=False)]  # the third covers its input


@pytest.mark.parametrize("kwargs", CONVS)
def test_conv_patches_and_backward_match_unfold_and_autograd(kwargs: dict) -> None:
    """kfac_conv against torch: patches are F.unfold's columns, A is the same kept or chunked, and ConvOutput's
    backward (matrix products, aten's kernel for the rest) is autograd's, with and without kept patches."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, **kwargs)
    x = torch.randn(5, 3, 5, 6, requires_grad=True)
    pad, dil = conv.padding, conv.dilation
    cols = torch.nn.functional.unfold(x.detach(), conv.kernel_size, dil, pad, conv.stride)  # [n, K, T]
    torch.testing.assert_close(patches(conv, x.detach()), cols.transpose(1, 2).reshape(-1, cols.shape[1]),
                               rtol=0, atol=0)
    kept = kept_patches(conv, x.detach())
    assert kept is not None
    torch.testing.assert_close(conv_input_moment(conv, x.detach(), kept), conv_input_moment(conv, x.detach()))
    grad = torch.randn_like(conv(x))
    expected = torch.autograd.grad(conv(x), [x, *conv.parameters()], grad)
    for keep in (kept, None):
        out = ConvOutput.apply(x, conv.weight, conv.bias, conv(x).detach(), conv, keep)
        for got, want in zip(torch.autograd.grad(out, [x, *conv.parameters()], grad), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- the policy step ------------------------------------------------------------------------------------------


def random_batch(dist, actor: Actor, obs_dim: int, n: int, seed: int) -> PolicyBatch:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, obs_dim, generator=gen) * 2 - 1
    with torch.no_grad():
        params = actor(obs)
        actions = dist.sample(params, gen)
        old_log_probs = dist.log_prob(params, actions)
    advantages = torch.randn(n, generator=gen)
    return PolicyBatch.of(actor, obs, actions, old_log_probs, advantages)


def independent_kl(space: spaces.Space, old, new) -> torch.Tensor:
    """Per-state KL(pi_old || pi_new) from torch.distributions."""
    if isinstance(space, spaces.Discrete):
        return dists.kl_divergence(dists.Categorical(logits=old[0]), dists.Categorical(logits=new[0]))
    return dists.kl_divergence(dists.Independent(dists.Normal(old[0], old[1].exp()), 1),
                               dists.Independent(dists.Normal(new[0], new[1].exp()), 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["categorical", "gaussian", "gsde", "image"]),
       natural_gradient=st.sampled_from(["kfac", "kfac_cg"]), hidden=st.lists(st.integers(1, 12), min_size=1,
       max_size=3), activation=st.sampled_from(["tanh", "relu"]), n=st.integers(2, 40),
       max_kl=st.floats(1e-4, 0.5), damping=st.floats(1e-3, 1.0), seed=st.integers(0, 2**16))
def test_the_kfac_step_never_accepts_a_kl_above_max_kl(kind: str, natural_gradient: str, hidden: list[int],
                                                        activation: str, n: int, max_kl: float, damping: float,
                                                        seed: int) -> None:
    stats = check_kfac_step(kind, natural_gradient, hidden, activation, n, max_kl, damping, seed)
    if natural_gradient == "kfac":
        assert stats["cg_iterations"] == 0


def check_kfac_step(kind: str, natural_gradient: str, hidden: list[int], activation: str, n: int, max_kl: float,
                    damping: float, seed: int, samples: int = 0) -> dict:
    """One K-FAC policy step (G sampled with `samples` > 0) on a random net and batch: an accepted step has an
    independently computed KL within max_kl and a gain >= 0, a refused one leaves the parameters bit-identical."""
    space, sde = SPACES["categorical" if kind == "image" else kind]
    torch.manual_seed(seed)
    dist = make_distribution(space, sde)
    image = IMAGE if kind == "image" else None
    obs_dim = IMAGE.size if image else 5
    actor = Actor(obs_dim, dist, tuple(hidden), activation, -0.5, image=image)
    batch = random_batch(dist, actor, obs_dim, n, seed)
    before = [p.detach().clone() for p in actor.parameters()]
    cfg = TRPOConfig(natural_gradient=natural_gradient, kfac_samples=samples, max_kl=max_kl, cg_damping=damping,
                     cg_iters=5)
    stats = TrustRegionRule(cfg, dist, torch.Generator().manual_seed(seed)).update(actor, batch)
    with torch.no_grad():
        kl = independent_kl(space, batch.old_params, actor(batch.obs)).mean()
    if stats["step_accepted"]:
        assert float(kl) <= max_kl * (1 + 1e-9)
        assert stats["surrogate_gain"] >= 0
    else:
        assert all(torch.equal(a, b) for a, b in zip(before, actor.parameters(), strict=True))
    return stats


@pytest.mark.parametrize("natural_gradient", ["kfac", "kfac_cg"])
@pytest.mark.parametrize("kind", ["gaussian", "image"])
def test_a_failed_kfac_step_leaves_the_parameters_bit_identical(monkeypatch, natural_gradient: str,
                                                                kind: str) -> None:
    space, sde = SPACES["categorical" if kind == "image" else kind]
    dist, actor, obs_dim = tiny_actor(space, sde, image=kind == "image")
    batch = random_batch(dist, actor, obs_dim, 32, 0)
    exact_kl = dist.kl
    monkeypatch.setattr(dist, "kl", lambda old, new: exact_kl(old, new) + 1.0)  # every candidate fails
    before = [p.detach().clone() for p in actor.parameters()]
    cfg = TRPOConfig(natural_gradient=natural_gradient, max_backtracks=3)
    stats = TrustRegionRule(cfg, dist).update(actor, batch)
    assert not stats["step_accepted"] and stats["step_status"] == "line_search_failed"
    assert all(torch.equal(a, b) for a, b in zip(before, actor.parameters(), strict=True))


def test_kfac_direction_is_close_to_the_exact_natural_gradient_on_a_wide_batch() -> None:
    """Not a bound K-FAC promises, a sanity check that it points the right way: its direction's cosine with
    (F + lambda I)^-1 g on a tiny net, far above a random direction's."""
    dist, actor, obs_dim = tiny_actor(*SPACES["categorical"])
    theta, params_fn = flat(actor)
    obs = torch.randn(64, obs_dim)
    f = explicit_fisher(dist, params_fn, theta, obs) + 0.1 * torch.eye(theta.numel())
    g = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(3))
    x = kfac(actor, dist, obs, 0.1).inverse(g)
    exact = torch.linalg.solve(f, g)
    assert float(x @ exact / (x.norm() * exact.norm())) > 0.5
    assert float(g @ x) > 0


def test_kfac_blocks_have_no_nan_on_dead_relu_layers() -> None:
    """A layer whose outputs never pass the ReLU gets G = 0: pi falls back to 1, the damping keeps it invertible."""
    dist, actor, obs_dim = tiny_actor(*SPACES["categorical"])
    actor.body[0].bias.data.fill_(-100.0)
    actor.activation = "relu"
    actor.body[1] = torch.nn.ReLU()
    blocks: KFAC = kfac(actor, dist, torch.randn(4, obs_dim), 0.1)
    v = torch.randn(sum(p.numel() for p in actor.parameters()))
    assert torch.isfinite(blocks.inverse(v)).all()
    assert float(blocks.kron[0].g.abs().max()) == 0.0


@pytest.mark.parametrize("subsample", [1, 3])
@pytest.mark.parametrize("name,image", [("gaussian", False), ("categorical", True)])
def test_the_kfac_rules_gradient_is_the_surrogates(subsample: int, name: str, image: bool) -> None:
    """g through K-FAC's own forward pass (fisher_subsample 1; a CNN's backward through kfac_conv.ConvOutput) or a
    pass of its own (3) is CG's g."""
    dist, actor, obs_dim = tiny_actor(*SPACES[name], image=image)
    batch = random_batch(dist, actor, obs_dim, 30, 4)
    state = {k: v.clone() for k, v in actor.state_dict().items()}
    norms = {}
    for natural_gradient in ("cg", "kfac"):
        actor.load_state_dict(state)
        cfg = TRPOConfig(natural_gradient=natural_gradient, fisher_subsample=subsample)
        norms[natural_gradient] = TrustRegionRule(cfg, dist).update(actor, batch)["grad_norm"]
    assert norms["kfac"] == pytest.approx(norms["cg"], rel=1e-12)


AGENT_ENVS = {
    "cartpole": ("CartPole-v1", {}),
    "gaussian": ("Pendulum-v1", {}),
    "gsde": ("Pendulum-v1", {"use_sde": True}),
    "multidiscrete": ("trpo_testenvs:MultiDiscreteAct-v0", {}),
    "multibinary": ("trpo_testenvs:MultiBinaryAct-v0", {}),
    "dict": ("trpo_testenvs:DictObs-v0", {"fisher_subsample": 2}),
    "masked": (lambda: MaskedChoiceEnv(nvec=(6, 4)), {}),
    "image": (PixelSideEnv, {"fisher_subsample": 2}),
}


@pytest.mark.parametrize("natural_gradient,product", [("kfac", "gauss_newton"), ("kfac_cg", "gauss_newton"),
                                                     ("cg", "layerwise")])
@pytest.mark.parametrize("name", list(AGENT_ENVS))
def test_kfac_moves_the_policy_on_every_space_and_actor_kind(name: str, natural_gradient: str, product: str) -> None:
    torch.set_default_dtype(torch.float32)  # the agent's usual dtype (the module's fixture set float64)
    env, overrides = AGENT_ENVS[name]
    cfg = TRPOConfig(num_envs=2, steps_per_env=64, value_epochs=1, natural_gradient=natural_gradient,
                     fisher_product=product, **overrides)
    agent = TRPO(env, config=cfg, seed=0)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.learn(256)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    for row in agent.history:
        assert row["step_accepted"] and 0 < row["kl"] <= cfg.max_kl * (1 + 1e-6)
        assert math.isfinite(row["cg_residual"]) and (row["cg_iterations"] == 0) == (natural_gradient == "kfac")
    agent.close()


# --- learning -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("natural_gradient", ["kfac", "kfac_cg"])
def test_kfac_learns_cartpole_within_20k_steps(natural_gradient: str) -> None:
    # Calibration (CartPole preset, natural_gradient switched, deterministic 10-episode evaluation after 20,480
    # steps, seeds 0-2, 2-core development machine under load, 2026-12-07): kfac 408.5, 500, 491.4; kfac_cg 500,
    # 366.4, 500; every step accepted (cg on the same seeds: 392.3, 500, 491.7). A random policy scores about 20.
    # Threshold 100: over 3.6x below every calibrated seed, far above random, as the cg test's.
    torch.set_default_dtype(torch.float32)  # the agent's usual dtype (the module's fixture set float64)
    agent = TRPO("CartPole-v1", seed=0, natural_gradient=natural_gradient)
    agent.learn(20_000)
    result = agent.evaluate(10)
    agent.close()
    assert sum(row["step_accepted"] for row in agent.history) >= 0.8 * len(agent.history)
    assert result["mean_return"] >= 100, result
    assert np.isfinite([row["xFx"] for row in agent.history]).all()
