"""conv_jacobian: a CNN actor's Jacobian built once per policy step gives the same J v, J^T u and Fisher-vector
products as autograd (float64, to rounding) and as the Hessian of the mean KL; other actors fall back to autograd."""

from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from trpo.conv_jacobian import conv_linearization
from trpo.distributions import Bernoulli, Categorical, DiagGaussian, MultiCategorical
from trpo.encoders import ImageLayout
from trpo.networks import Actor
from trpo.trust_region import autograd_linearization, gauss_newton_fvp, hessian_fvp
from trpo.update_rules import flat_parameters

DISTS = {
    "categorical": lambda: Categorical(spaces.Discrete(5)),
    "multicategorical": lambda: MultiCategorical(spaces.MultiDiscrete([3, 4])),
    "bernoulli": lambda: Bernoulli(spaces.MultiBinary(3)),
}


def actor_and_obs(dist, encoder: str, side: int, n: int = 24, **kwargs):
    torch.manual_seed(0)
    layout = ImageLayout(2, side, side, False, 1 / 255)
    actor = Actor(layout.size, dist, [16], "tanh", 0.0, image=layout, image_encoder=encoder, **kwargs).double()
    for p in actor.parameters():  # away from the small init, so every layer's products matter
        p.data.normal_(0, 0.2)
    obs = torch.randint(0, 256, (n, layout.size), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    return actor, obs


@pytest.mark.parametrize("encoder,side", [pytest.param("paper", 12, marks=pytest.mark.numerics), ("nature", 36)])
@pytest.mark.parametrize("dist_name", list(DISTS))
def test_products_equal_autograds_and_the_kl_hessian(encoder: str, side: int, dist_name: str) -> None:
    dist = DISTS[dist_name]()
    actor, obs = actor_and_obs(dist, encoder, side)
    theta, params_of = flat_parameters(actor)
    fast = conv_linearization(actor, obs, theta)
    assert fast is not None
    ref = autograd_linearization(lambda th: params_of(th, obs), theta)
    torch.testing.assert_close(fast.params[0], ref.params[0], rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        u = (torch.randn(ref.params[0].shape, generator=gen, dtype=theta.dtype),)
        torch.testing.assert_close(fast.jvp(v)[0], ref.jvp(v)[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast.vjp(u), ref.vjp(u), rtol=1e-10, atol=1e-12)
    # The Fisher-vector product from it is the Hessian of the mean KL(pi_old || pi_theta) at theta_old.
    old = tuple(p.detach() for p in params_of(theta, obs))
    hess = hessian_fvp(lambda th: dist.kl(old, params_of(th, obs)).mean(), theta, 0.1)
    fvp = gauss_newton_fvp(fast, dist.fisher_metric_product, 0.1)
    v = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
    torch.testing.assert_close(fvp(v), hess(v), rtol=1e-8, atol=1e-10)


def test_other_actors_fall_back_to_autograd() -> None:
    gauss = DiagGaussian(spaces.Box(-1, 1, (2,)))
    actor, obs = actor_and_obs(gauss, "paper", 12)  # a log-std beside the head
    assert conv_linearization(actor, obs, flat_parameters(actor)[0]) is None
    recurrent, obs = actor_and_obs(Categorical(spaces.Discrete(3)), "paper", 12, recurrent="gru")
    assert conv_linearization(recurrent, obs, flat_parameters(recurrent)[0]) is None
    mlp = Actor(8, Categorical(spaces.Discrete(3)), [16], "tanh", 0.0).double()
    assert conv_linearization(mlp, torch.zeros(4, 8, dtype=torch.float64), flat_parameters(mlp)[0]) is None
    layout = ImageLayout(1, 12, 12, False, 1.0)
    masked = Actor(layout.size + 3, Categorical(spaces.Discrete(3)), [16], "tanh", 0.0, mask_dim=3, image=layout)
    assert conv_linearization(masked, torch.ones(4, layout.size + 3), flat_parameters(masked)[0]) is None
