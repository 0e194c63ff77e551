"""Distributions against torch.distributions; observation encoding; clear errors for unsupported spaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as dists

from trpo.distributions import make_distribution
from trpo.observations import ObsEncoder, UnsupportedSpaceError

# Floats through kernels that numpy and torch pick per CPU: scripts/dev.py test runs these again with others forced.
pytestmark = pytest.mark.numerics

GEN = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


def reference(space: spaces.Space, params: tuple[torch.Tensor, ...]) -> dists.Distribution:
    """The same distribution built from torch.distributions, batch shape [B]."""
    if isinstance(space, spaces.Discrete):
        return dists.Categorical(logits=params[0])
    if isinstance(space, spaces.Box):
        return dists.Independent(dists.Normal(params[0], params[1].exp()), 1)
    if isinstance(space, spaces.MultiBinary):
        return dists.Independent(dists.Bernoulli(logits=params[0]), 1)
    raise AssertionError(space)


CASES = {
    "categorical": (spaces.Discrete(5), lambda b: (rand(b, 5),)),
    "gaussian": (spaces.Box(-2, 2, (3,)), lambda b: (rand(b, 3), 0.5 * rand(b, 3))),
    "bernoulli": (spaces.MultiBinary(4), lambda b: (rand(b, 4),)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kl_log_prob_entropy_match_torch_distributions(name: str) -> None:
    space, make = CASES[name]
    dist = make_distribution(space)
    old, new = make(8), make(8)
    ref_old, ref_new = reference(space, old), reference(space, new)
    torch.testing.assert_close(dist.kl(old, new), dists.kl_divergence(ref_old, ref_new))
    actions = ref_old.sample()
    torch.testing.assert_close(dist.log_prob(old, actions), ref_old.log_prob(actions))
    torch.testing.assert_close(dist.entropy(old), ref_old.entropy())
    assert torch.all(dist.kl(old, old).abs() < 1e-12)


def test_multicategorical_matches_a_sum_of_categoricals() -> None:
    space = spaces.MultiDiscrete([3, 2, 4])
    dist = make_distribution(space)
    old, new = (rand(6, 9),), (rand(6, 9),)
    parts_old = torch.split(old[0], [3, 2, 4], dim=-1)
    parts_new = torch.split(new[0], [3, 2, 4], dim=-1)
    kl = sum(dists.kl_divergence(dists.Categorical(logits=o), dists.Categorical(logits=n)) for o, n in
             zip(parts_old, parts_new, strict=True))
    torch.testing.assert_close(dist.kl(old, new), kl)
    actions = torch.stack([dists.Categorical(logits=o).sample() for o in parts_old], dim=-1)
    logp = sum(dists.Categorical(logits=o).log_prob(actions[:, i]) for i, o in enumerate(parts_old))
    torch.testing.assert_close(dist.log_prob(old, actions), logp)
    ent = sum(dists.Categorical(logits=o).entropy() for o in parts_old)
    torch.testing.assert_close(dist.entropy(old), ent)


def test_gaussian_kl_is_the_joint_kl_not_a_per_dimension_mean() -> None:
    dist = make_distribution(spaces.Box(-1, 1, (3,)))
    old = (torch.zeros(1, 3), torch.zeros(1, 3))
    new = (torch.full((1, 3), 0.1), torch.zeros(1, 3))
    assert float(dist.kl(old, new)) == pytest.approx(3 * 0.5 * 0.01)


def test_box_actions_are_clipped_for_the_env_only() -> None:
    space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    dist = make_distribution(space)
    params = (torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    action = torch.tensor([[3.0, -0.5]])
    np.testing.assert_array_equal(dist.to_env(action.numpy()), np.array([[1.0, -0.5]], np.float32))
    assert dist.to_env(action.numpy()).dtype == np.float32
    unclipped = dists.Independent(dists.Normal(params[0], torch.ones(1, 2)), 1).log_prob(action)
    torch.testing.assert_close(dist.log_prob(params, action), unclipped)


def test_discrete_start_offsets_are_applied() -> None:
    dist = make_distribution(spaces.Discrete(3, start=-1))
    assert dist.to_env(np.array([0, 2])).tolist() == [-1, 1]
    assert dist.to_env_list(np.array([0, 2])) == [-1, 1]
    md = make_distribution(spaces.MultiDiscrete([2, 3], start=[1, 5]))
    assert md.to_env(np.array([[0, 2]])).tolist() == [[1, 7]]


def test_sampling_is_reproducible_with_a_generator() -> None:
    for space in (spaces.Discrete(4), spaces.Box(-1, 1, (2,)), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3)):
        dist = make_distribution(space)
        params = (torch.zeros(5, dist.head_dim),) if not isinstance(space, spaces.Box) else \
            (torch.zeros(5, 2), torch.zeros(5, 2))
        a = dist.sample(params, torch.Generator().manual_seed(1))
        b = dist.sample(params, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        for act in dist.to_env_list(a.numpy()):
            assert space.contains(act)


@pytest.mark.parametrize("space", [spaces.Discrete(4), spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([2, 3]),
                                   spaces.MultiBinary(3)])
def test_rollout_sampling_in_numpy_equals_torch_sampling(space: spaces.Space) -> None:
    """Rollouts sample with pick(head + shift) on numpy arrays, one step at a time, from a batch's noise shifted
    at once; this must give exactly the actions of sample_with_noise on tensors."""
    dist = make_distribution(space)
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(6, 5, dist.head_dim, generator=gen)
    params = (head, torch.full_like(head, -0.7)) if isinstance(space, spaces.Box) else (head,)
    noise = dist.noise((6, 5, dist.head_dim), gen)
    expected = dist.sample_with_noise(params, noise)
    shifted = dist.shift(tuple(p[:1, :1] for p in params), noise).numpy()  # a state-independent shift
    for t in range(6):
        got = dist.pick(head[t].numpy() + shifted[t])
        np.testing.assert_array_equal(got, expected[t].numpy())


def test_obs_encoder_box_discrete_dict() -> None:
    box = ObsEncoder(spaces.Box(-1, 1, (2, 3)))
    assert box.dim == 6
    assert box(np.ones((4, 2, 3))).shape == (4, 6)
    disc = ObsEncoder(spaces.Discrete(3, start=1))
    np.testing.assert_array_equal(disc(np.array([1, 3])), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(disc.one(2), [0, 1, 0])
    dct = ObsEncoder(spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Box(0, 1, (2,))}))
    assert dct.dim == 4
    np.testing.assert_array_equal(dct({"a": np.array([1]), "b": np.array([[0.5, 0.25]])}), [[0, 1, 0.5, 0.25]])
    np.testing.assert_array_equal(dct.one({"a": 0, "b": np.array([0.1, 0.2], np.float32)}),
                                  np.array([1, 0, 0.1, 0.2], np.float32))


@pytest.mark.parametrize("space", [spaces.Text(4), spaces.Tuple((spaces.Discrete(2),)), spaces.Graph(
    spaces.Box(0, 1, (2,)), None)])
def test_unsupported_observation_space_names_the_space(space: spaces.Space) -> None:
    with pytest.raises(UnsupportedSpaceError, match=type(space).__name__):
        ObsEncoder(space)
    with pytest.raises(UnsupportedSpaceError, match="unsupported action space"):
        make_distribution(space)


def test_categorical_sampler_matches_its_probabilities() -> None:
    dist = make_distribution(spaces.Discrete(4))
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(200_000, 4)
    counts = torch.bincount(dist.sample((logits,), torch.Generator().manual_seed(0)), minlength=4).double()
    # Binomial standard error at n = 200k is at most 0.0011; 5 sigma.
    torch.testing.assert_close(counts / counts.sum(), probs.double(), atol=0.0056, rtol=0)
