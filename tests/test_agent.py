"""Behaviour of the TRPO agent on real environments: the KL bound, exact restore on a failed line search,
determinism, save/load, every supported space, rollouts that keep truncation and termination apart."""

from __future__ import annotations

import gc
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import trpo_testenvs
from float32 import ELEMENTWISE_ULPS, UNIT_ROUNDOFF, mlp_error_bound
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import distributions as dists

from trpo import TRPO, ConfigError, TRPOConfig
from trpo.envs import EnvError
from trpo.logger import TIMING_FIELDS
from trpo.update_rules import PolicyBatch, policy_stats

SMALL = TRPOConfig(num_envs=2, steps_per_env=128, value_epochs=2, value_minibatch=64)


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def fresh_batch(agent: TRPO):
    batch = agent.learner.collector_or_new().collect(agent.actor, agent.config.steps_per_env, agent.sample_gen)
    obs = batch.obs.reshape(-1, batch.obs.shape[-1])
    actions = batch.actions.reshape(-1, *batch.actions.shape[2:])
    with torch.no_grad():
        values, next_values = agent.critic(batch.obs), agent.critic(batch.next_obs)
    from trpo.advantages import estimate, normalize

    adv, _ = estimate("gae", batch.rewards, values, next_values, batch.terminated, batch.truncated, 0.99, 0.95)
    return obs, actions, batch.log_probs.reshape(-1), normalize(adv.reshape(-1))


def policy_update(agent: TRPO, obs, actions, old_logp, adv) -> dict:
    """One call of the agent's update rule on a batch, with the figures every rule logs."""
    batch = PolicyBatch.of(agent.actor, obs, actions, old_logp, adv)
    stats = agent.update_rule.update(agent.actor, batch)
    return {**stats, **policy_stats(agent.actor, agent.dist, batch, None)}


def update_with_independent_kl(agent: TRPO) -> tuple[dict, torch.Tensor]:
    """One update rule call on a fresh batch, and the per-state KL(pi_old || pi_new) it caused, computed
    independently with torch.distributions (joint over action dimensions)."""
    obs, actions, old_logp, adv = fresh_batch(agent)
    with torch.no_grad():
        old = tuple(p.clone() for p in agent.actor(obs))
    step = policy_update(agent, obs, actions, old_logp, adv)
    with torch.no_grad():
        new = agent.actor(obs)
        if isinstance(agent.action_space, spaces.Discrete):
            kl = dists.kl_divergence(dists.Categorical(logits=old[0]), dists.Categorical(logits=new[0]))
        else:
            kl = dists.kl_divergence(dists.Independent(dists.Normal(old[0], old[1].exp()), 1),
                                     dists.Independent(dists.Normal(new[0], new[1].exp()), 1))
    return step, kl


@pytest.mark.parametrize("env_id,max_kl", [("CartPole-v1", 0.01), ("Pendulum-v1", 0.02), ("Acrobot-v1", 0.005)])
def test_measured_kl_after_real_updates_is_within_delta(env_id: str, max_kl: float) -> None:
    agent = TRPO(env_id, config=SMALL.replace(max_kl=max_kl), seed=0)
    accepted = 0
    for _ in range(4):
        step, per_state = update_with_independent_kl(agent)
        kl = float(per_state.mean())
        assert kl <= max_kl * (1 + 1e-5)
        assert kl == pytest.approx(step["kl"], rel=1e-4, abs=1e-9)
        accepted += step["step_accepted"]
        if step["step_accepted"]:
            assert step["surrogate_gain"] >= 0
    assert accepted >= 3  # the checks pass on real batches, not only by rejecting
    agent.close()


def test_failed_line_search_restores_parameters_bit_for_bit(monkeypatch) -> None:
    agent = TRPO("Pendulum-v1", config=SMALL.replace(max_backtracks=2), seed=0)
    exact_kl = agent.dist.kl
    # Every candidate now measures KL > delta, so the line search must fail.
    monkeypatch.setattr(agent.dist, "kl", lambda old, new: exact_kl(old, new) + 1.0)
    before = snapshot(agent.actor)
    obs, actions, old_logp, adv = fresh_batch(agent)
    step = policy_update(agent, obs, actions, old_logp, adv)
    assert not step["step_accepted"] and step["step_status"] == "line_search_failed"
    for a, b in zip(before, agent.actor.parameters(), strict=True):
        assert torch.equal(a, b)
    agent.close()


def test_npg_mode_moves_the_policy_without_a_line_search() -> None:
    agent = TRPO("CartPole-v1", config=SMALL.replace(update_rule="npg"), seed=0)
    agent.learn(512)
    row = agent.history[-1]
    assert row["step_status"] == "npg" and row["line_search_steps"] == 0 and row["step_fraction"] == 1.0
    agent.close()


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


# The test env autoresets every 20 steps: its observations must follow the seed through them too.
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "trpo_testenvs:DictObs-v0"])
def test_same_seed_same_metrics(env_id: str) -> None:
    cfg = SMALL.replace(normalize_obs=True, normalize_reward=True)
    runs = []
    for _ in range(2):
        agent = TRPO(env_id, config=cfg, seed=3)
        agent.learn(1024)
        runs.append(strip_timing(agent.history))
        agent.close()
    assert runs[0] == runs[1]
    other = TRPO(env_id, config=cfg, seed=4)
    other.learn(1024)
    assert strip_timing(other.history) != runs[0]


def test_save_load_gives_identical_actions_and_normalizer(tmp_path) -> None:
    agent = TRPO("Pendulum-v1", config=SMALL.replace(normalize_obs=True), seed=1)
    agent.learn(512)
    path = tmp_path / "model.pt"
    agent.save(path)
    loaded = TRPO.load(path)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs)[0], loaded.predict(obs)[0])
    np.testing.assert_array_equal(agent.predict(obs[0])[0], loaded.predict(obs[0])[0])
    np.testing.assert_array_equal(agent.obs_norm.stats.mean, loaded.obs_norm.stats.mean)
    assert loaded.num_steps == agent.num_steps == 512
    assert loaded.config == agent.config
    assert agent.evaluate(2) == loaded.evaluate(2)
    agent.close()
    loaded.close()


def test_predict_returns_valid_actions_and_stochastic_differs() -> None:
    agent = TRPO("Pendulum-v1", config=SMALL, seed=0)
    obs, _ = gym.make("Pendulum-v1").reset(seed=0)
    a, state = agent.predict(obs)
    assert state is None  # a feed-forward policy has no state
    assert a.shape == (1,) and agent.action_space.contains(a)
    samples = {float(agent.predict(obs, deterministic=False)[0][0]) for _ in range(5)}
    assert len(samples) > 1
    agent.close()


SPACE_ENVS = {
    "multidiscrete": lambda: trpo_testenvs.SpacesEnv(spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([3, 2])),
    "multibinary": lambda: trpo_testenvs.SpacesEnv(spaces.Box(-1, 1, (3,)), spaces.MultiBinary(4)),
    "discrete_obs": lambda: trpo_testenvs.SpacesEnv(spaces.Discrete(5, start=2), spaces.Discrete(3)),
    "dict_obs": lambda: trpo_testenvs.SpacesEnv(
        spaces.Dict({"pos": spaces.Box(-1, 1, (2, 2)), "mode": spaces.Discrete(3)}), spaces.Box(-1, 1, (2,))
    ),
}


@pytest.mark.parametrize("name", list(SPACE_ENVS))
def test_every_supported_space_trains_and_improves(name: str) -> None:
    """The reward is -sum(action): a working policy step lowers the mean action within a few updates."""
    cfg = TRPOConfig(num_envs=2, steps_per_env=200, value_epochs=2, max_kl=0.05)
    agent = TRPO(SPACE_ENVS[name], config=cfg, seed=0)
    before = agent.evaluate(3, deterministic=False)["mean_return"]
    agent.learn(4000)
    after = agent.evaluate(3, deterministic=False)["mean_return"]
    assert all(row["step_accepted"] for row in agent.history[:3])
    assert after > before
    agent.close()


def test_truncation_stores_the_true_final_observation() -> None:
    # Counter-v0: obs = step count, truncated by TimeLimit at 7 steps; the reset obs is 0.
    agent = TRPO("trpo_testenvs:Counter-v0", config=SMALL.replace(num_envs=1, steps_per_env=10), seed=0)
    batch = agent.learner.collector_or_new().collect(agent.actor, 10, agent.sample_gen)
    assert batch.truncated[:, 0].tolist() == [False] * 6 + [True] + [False] * 3
    assert not batch.terminated.any()
    assert float(batch.next_obs[6, 0, 0]) == 7.0  # the final observation, not the reset one
    assert float(batch.obs[7, 0, 0]) == 0.0  # the next step starts from the reset observation
    assert batch.episode_lengths == [7]
    agent.close()


def test_termination_is_kept_apart_from_truncation() -> None:
    env_fn = lambda: gym.wrappers.TimeLimit(trpo_testenvs.CounterEnv(terminate_at=3), 50)  # noqa: E731
    agent = TRPO(env_fn, config=SMALL.replace(num_envs=1, steps_per_env=6), seed=0)
    batch = agent.learner.collector_or_new().collect(agent.actor, 6, agent.sample_gen)
    assert batch.terminated[:, 0].tolist() == [False, False, True, False, False, True]
    assert not batch.truncated.any()
    agent.close()


@pytest.mark.parametrize("env_id,what", [("trpo_testenvs:NanObs-v0", "observation"),
                                         ("trpo_testenvs:NanReward-v0", "reward")])
def test_non_finite_env_values_raise_a_clear_error(env_id: str, what: str) -> None:
    agent = TRPO(env_id, config=SMALL, seed=0)
    with pytest.raises(EnvError, match=f"non-finite {what}"):
        agent.learn(1000)
    agent.close()


def test_callback_can_stop_training_and_sees_metrics() -> None:
    seen = []

    def callback(agent: TRPO, metrics: dict) -> bool:
        seen.append(metrics["step"])
        return len(seen) < 2

    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    agent.learn(10_000, callback=callback)
    assert seen == [256, 512] and agent.num_steps == 512
    agent.close()


def test_metrics_rows_hold_every_documented_field() -> None:
    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    agent.learn(512)
    required = {"step", "episode_return_mean", "episode_length_mean", "kl", "surrogate_gain", "expected_gain",
                "line_search_steps", "step_accepted", "cg_residual", "xFx", "entropy", "value_loss",
                "explained_variance", "fps"}
    for row in agent.history:
        assert required <= row.keys()
        assert row["kl"] <= SMALL.max_kl
        assert math.isfinite(row["xFx"]) and row["xFx"] > 0
    agent.close()


def test_env_instance_and_factory_are_accepted() -> None:
    inst = TRPO(gym.make("CartPole-v1"), config=SMALL.replace(num_envs=1), seed=0)
    inst.learn(256)
    assert inst.env_id == "CartPole-v1"
    inst.close()
    with pytest.raises(EnvError, match="instance"):
        TRPO(gym.make("CartPole-v1"), config=SMALL, seed=0).learn(256)
    with pytest.raises(EnvError, match="instance"):
        TRPO(gym.make("CartPole-v1"), config=SMALL.replace(num_envs=1, vector_mode="subprocess"), seed=0).learn(256)


@pytest.mark.numerics
@pytest.mark.parametrize("env_id,num_envs,num_workers,steps", [("CartPole-v1", 3, 0, 0), ("Pendulum-v1", 2, 0, 0),
                                                                ("CartPole-v1", 3, 1, 0), ("Pendulum-v1", 4, 2, 420)])
def test_subprocess_workers_give_the_same_run_as_sync(env_id: str, num_envs: int, num_workers: int,
                                                      steps: int) -> None:
    # The last case: 2-3 Pendulum episodes (float returns) end per env and batch, in both workers: the logged mean
    # over them is the same float only if the episodes come in the same order whatever the layout.
    cfg = SMALL.replace(num_envs=num_envs, num_workers=num_workers, normalize_obs=True, normalize_reward=True,
                        steps_per_env=steps or SMALL.steps_per_env)
    rows = []
    for mode in ("sync", "subprocess"):
        agent = TRPO(env_id, config=cfg.replace(vector_mode=mode), seed=0)
        agent.learn(3 * cfg.batch_size)
        rows.append(strip_timing(agent.history))
        agent.close()
    assert rows[0] == rows[1]


def test_next_batch_is_collected_during_the_value_fit_and_the_run_is_unchanged() -> None:
    """In subprocess mode the next batch is in flight while the critic is fitted; stopping with a batch in flight
    and calling learn() again continues exactly as one uninterrupted run does."""
    cfg = SMALL.replace(vector_mode="subprocess", normalize_obs=True, normalize_reward=True)
    whole = TRPO("Pendulum-v1", config=cfg, seed=1)
    in_flight = []
    whole.learn(4 * cfg.batch_size, callback=lambda agent, _: in_flight.append(agent.learner.collector.collecting))
    assert in_flight == [True, True, True, False]  # nothing set going after the last update
    whole.close()

    split = TRPO("Pendulum-v1", config=cfg, seed=1)
    split.learn(4 * cfg.batch_size, callback=lambda agent, _: agent.num_updates < 2)  # stops after update 2
    assert split.learner.collector.collecting
    split.train_until(4 * cfg.batch_size)
    assert strip_timing(split.history) == strip_timing(whole.history)
    split.close()


@pytest.mark.parametrize("mode", ["sync", "subprocess"])
def test_a_batch_set_going_before_the_actor_changed_is_collected_again(mode: str) -> None:
    """log pi_old must come from the policy that acted: if the actor changes between start() and finish(), the
    batch is dropped and collected anew with the new actor."""
    agent = TRPO("CartPole-v1", config=SMALL.replace(vector_mode=mode), seed=0)
    collector = agent.learner.collector_or_new()
    collector.start(agent.actor, 64, agent.sample_gen)  # the initial, near-uniform policy
    with torch.no_grad():  # a policy that pushes right (action 1) with probability ~1
        agent.actor.head.linear.weight.zero_()
        agent.actor.head.linear.bias.copy_(torch.tensor([-30.0, 30.0]))
    batch = collector.finish(agent.actor)
    assert bool((batch.actions == 1).all())  # acted by the new policy, not the one at start()
    flat_obs = batch.obs.reshape(-1, batch.obs.shape[-1])
    with torch.no_grad():
        expected = agent.dist.log_prob(agent.actor(flat_obs), batch.actions.reshape(-1))
    torch.testing.assert_close(batch.log_probs.reshape(-1), expected)
    assert not collector.collecting
    agent.close()


def test_close_with_a_batch_in_flight_stops_the_workers_cleanly() -> None:
    agent = TRPO("Hopper-v5", config=SMALL.replace(vector_mode="subprocess"), seed=0)
    collector = agent.learner.collector_or_new()
    collector.start(agent.actor, 8192, agent.sample_gen)  # ~0.8 MB a worker: more than a socket pair buffers
    procs = collector.runner.procs
    agent.close()
    assert [p.exitcode for p in procs] == [0] * len(procs)  # exited on "close", not killed after the timeout
    assert gc.get_freeze_count() == 0  # objects frozen before forking the workers are collectable again


def _train_in_daemon() -> str:
    try:
        TRPO("CartPole-v1", config=SMALL.replace(vector_mode="subprocess"), seed=0).learn(256)
    except EnvError as exc:
        return str(exc)
    return "no error"


def test_subprocess_mode_inside_a_daemonic_process_is_a_clear_error() -> None:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        message = pool.apply(_train_in_daemon)
    assert "daemonic process" in message


def test_an_env_worker_that_dies_is_a_clear_error() -> None:
    import os
    import signal

    agent = TRPO("CartPole-v1", config=SMALL.replace(vector_mode="subprocess"), seed=0)
    collector = agent.learner.collector_or_new()
    # Long enough that the worker is still stepping when it is killed (with 64 steps it could send its whole
    # segment first, and then nothing had died as far as this batch is concerned).
    collector.start(agent.actor, 20_000, agent.sample_gen)
    os.kill(collector.runner.procs[1].pid, signal.SIGKILL)
    with pytest.raises(EnvError, match=r"env worker process 1 \(envs 1-1\) died \(exit code -9\)"):
        collector.finish(agent.actor)
    agent.close()  # and closing the rest of the pool does not hang


def test_errors_in_worker_processes_reach_the_caller() -> None:
    agent = TRPO("trpo_testenvs:NanReward-v0", config=SMALL.replace(vector_mode="subprocess"), seed=0)
    with pytest.raises(EnvError, match="non-finite reward"):
        agent.learn(1000)
    agent.close()


@pytest.mark.numerics
def test_hessian_and_gauss_newton_products_give_the_same_update() -> None:
    results = []
    for form in ("hessian", "gauss_newton"):
        agent = TRPO("Pendulum-v1", config=SMALL.replace(fisher_product=form), seed=0)
        agent.learn(256)
        results.append(agent.history[-1])
        agent.close()
    for key in ("kl", "xFx", "surrogate_gain", "line_search_steps"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-3, abs=1e-7), key


@pytest.mark.numerics
@pytest.mark.parametrize("space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,)), spaces.MultiBinary(2)])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_rollout_policy_matches_the_torch_actor(space: spaces.Space, activation: str) -> None:
    from trpo.distributions import make_distribution
    from trpo.networks import Actor
    from trpo.normalization import ObsNormalizer
    from trpo.policy import NumpyMLP, TorchActing, snapshot

    torch.manual_seed(0)
    dist = make_distribution(space)
    actor = Actor(4, dist, (8, 8), activation, init_log_std=-0.5)
    norm = ObsNormalizer(4, True, 10.0)
    norm.update(np.random.default_rng(1).normal(2.0, 3.0, size=(50, 4)))
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    fast = snapshot(actor, dist, norm.frozen())
    assert isinstance(fast, NumpyMLP)
    with torch.no_grad():
        exact = actor(torch.from_numpy(norm.frozen()(obs)))
    # numpy's BLAS and torch's pick their matmul kernels at run time, per CPU: the two heads agree within twice
    # the float32 rounding bound of the MLP on these inputs (tests/float32.py), not bit for bit.
    bound = 2 * mlp_error_bound(fast.layers, norm.frozen()(obs))
    head = exact[0].numpy()
    assert np.all(np.abs(fast.head(obs) - head) <= bound)
    # The same noise gives the same actions through the numpy MLP and the torch modules: a Gaussian action is
    # head + sigma * noise, with sigma from exp() in each library (a few ulps apart); a discrete action compares
    # the shifted head, so it is the same wherever the decision margin is wider than the bound, as it is here.
    noise = dist.noise((5, dist.head_dim), torch.Generator().manual_seed(3))
    slow = TorchActing(actor, dist, norm.frozen())
    fast_actions = fast.act(obs, None, np.zeros(5, bool), noise.numpy())[0] * 1.0
    slow_actions = slow.act(obs, None, np.zeros(5, bool), noise.numpy())[0] * 1.0
    with torch.no_grad():
        shifted = (exact[0] + dist.shift(exact, noise)).numpy()
    if isinstance(space, spaces.Box):
        sigma_noise = np.abs(shifted - head)
        np.testing.assert_array_less(np.abs(fast_actions - slow_actions),
                                     bound + ELEMENTWISE_ULPS * UNIT_ROUNDOFF * (sigma_noise + np.abs(shifted)))
    else:
        top = np.sort(shifted, -1) if isinstance(space, spaces.Discrete) else np.abs(shifted)
        margin = top[:, -1] - top[:, -2] if isinstance(space, spaces.Discrete) else top.min(-1)
        assert np.all(margin > 2 * bound.max())
        np.testing.assert_array_equal(fast_actions, slow_actions)


@pytest.mark.numerics
@settings(max_examples=40, deadline=None)
@given(obs_dim=st.integers(1, 40), hidden=st.lists(st.integers(1, 80), min_size=1, max_size=3),
       discrete=st.booleans(), rows=st.integers(1, 24), data=st.data())
def test_each_env_gets_the_same_action_bits_however_the_envs_are_split(obs_dim: int, hidden: list[int],
                                                                        discrete: bool, rows: int, data) -> None:
    """What makes sync, subprocess and ray runs bit-identical on one machine: the numpy acting MLP gives each row
    the same bits whatever rows come with it. A BLAS matmul does not (its kernel, and so its summation order,
    depends on the number of rows: 107 of 720 shapes differed here with OpenBLAS), so the MLP uses einsum's own
    loops; the kernel variants of scripts/dev.py hold this for numpy's other SIMD targets too."""
    from trpo.distributions import make_distribution
    from trpo.networks import Actor
    from trpo.normalization import ObsNormalizer
    from trpo.policy import snapshot

    torch.manual_seed(data.draw(st.integers(0, 2**16), "seed"))
    dist = make_distribution(spaces.Discrete(5) if discrete else spaces.Box(-1, 1, (3,)))
    actor = Actor(obs_dim, dist, tuple(hidden), data.draw(st.sampled_from(["tanh", "relu"]), "activation"), -0.5)
    fast = snapshot(actor, dist, ObsNormalizer(obs_dim, False, 10.0).frozen())
    obs = np.random.default_rng(rows).normal(size=(rows, obs_dim)).astype(np.float32)
    start = data.draw(st.integers(0, rows - 1), "start")
    stop = data.draw(st.integers(start + 1, rows), "stop")
    np.testing.assert_array_equal(fast.head(obs[start:stop]), fast.head(obs)[start:stop])
    one = np.ascontiguousarray(obs[start : start + 1])
    np.testing.assert_array_equal(fast.head(one), fast.head(obs)[start : start + 1])


def test_runner_matches_gymnasium_same_step_autoreset() -> None:
    """Our runner's observations, rewards, flags and final observations equal gymnasium's SyncVectorEnv with
    SAME_STEP autoreset, fed the same actions."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    agent = TRPO("CartPole-v1", config=SMALL.replace(num_envs=3, steps_per_env=300), seed=5)
    batch = agent.learner.collector_or_new().collect(agent.actor, 300, agent.sample_gen)
    ref = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = ref.reset(seed=5)
    ended = 0
    for t in range(300):
        np.testing.assert_array_equal(batch.obs[t].numpy(), obs)
        obs, reward, term, trunc, info = ref.step(batch.actions[t].numpy())
        np.testing.assert_array_equal(batch.terminated[t].numpy(), term)
        np.testing.assert_array_equal(batch.truncated[t].numpy(), trunc)
        np.testing.assert_array_equal(batch.rewards[t].numpy(), reward.astype(np.float32))
        for i in range(3):
            expected = info["final_obs"][i] if term[i] or trunc[i] else obs[i]
            np.testing.assert_array_equal(batch.next_obs[t, i].numpy(), expected)
        ended += int((term | trunc).sum())
    assert ended > 5
    agent.close()


def test_predict_refuses_observations_that_do_not_fit_the_space_in_one_line() -> None:
    from trpo import ObservationError

    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    obs, _ = gym.make("CartPole-v1").reset(seed=0)
    for bad in (obs[:3], obs.reshape(2, 2), np.float32(0.5), None, obs[None, :2], np.zeros((2, 3, 4))):
        message = r"^predict: .*(does not fit the observation space|are numbers)"
        with pytest.raises(ObservationError, match=message) as info:
            agent.predict(bad)
        assert "\n" not in str(info.value)
    empty, _ = agent.predict(np.zeros((0, 4), np.float32))  # an empty batch: no actions
    assert empty.shape == (0,)
    disc = TRPO("trpo_testenvs:DiscreteObs-v0", config=SMALL, seed=0)  # Discrete(5, start=2)
    assert disc.predict(2)[0] in range(3) and disc.predict(np.array([2, 6]))[0].shape == (2,)
    for bad in (1, 7, 2.5, np.array([[2]])):
        with pytest.raises(ObservationError, match="predict: "):
            disc.predict(bad)
    agent.close()
    disc.close()


def test_learn_takes_only_a_positive_integer_count() -> None:
    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    for bad in ("100", 0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="total_timesteps must be a positive integer"):
            agent.learn(bad)
        with pytest.raises(ConfigError, match="total_steps must be a positive integer"):
            agent.train_until(bad)
    with pytest.raises(ConfigError, match="learn\\(\\) without a count continues a run to its total_steps"):
        agent.learn()
    agent.learn(np.int64(256))
    assert agent.num_steps == 256
    agent.close()


def test_learn_has_sb3s_meaning_and_train_until_takes_a_total(tmp_path) -> None:
    """learn(n) twice trains twice (SB3: each call n more steps, its counters reset unless asked not to);
    train_until(total) trains to a total; in a run directory the counters are the run's and never reset."""
    u = 256 // SMALL.batch_size  # updates per 256 steps
    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    agent.learn(256)
    agent.learn(256)  # counters start again: 256 more steps, counted from 0
    assert agent.num_steps == 256 and agent.num_updates == u and len(agent.history) == 2 * u
    agent.learn(256, reset_num_timesteps=False)
    assert agent.num_steps == 512 and agent.num_updates == 2 * u and len(agent.history) == 3 * u
    agent.train_until(512)  # there already: nothing to train
    agent.train_until(768)
    assert agent.num_steps == 768 and len(agent.history) == 4 * u
    agent.close()
    run = TRPO("CartPole-v1", config=SMALL, seed=0, run_dir=tmp_path / "run")
    run.learn(256)
    with pytest.raises(ConfigError, match="reset_num_timesteps=False"):
        run.learn(256)
    run.learn(256, reset_num_timesteps=False)
    assert run.num_steps == 512 and run.total_steps == 512
    run.close()
    resumed = TRPO.resume(tmp_path / "run")
    resumed.learn()  # to the run's total, which it has reached: nothing to train
    assert resumed.num_steps == 512 and (tmp_path / "run" / "final.pt").is_file()
    resumed.learn(256, reset_num_timesteps=False)
    assert resumed.num_steps == 768 and resumed.total_steps == 768
    resumed.close()


def test_evaluation_of_an_env_without_a_time_limit_ends_and_says_so() -> None:
    # CliffWalking has no time limit; an untrained deterministic policy walks into a wall forever.
    agent = TRPO("CliffWalking-v1", config=SMALL.replace(eval_max_steps=300), seed=0)
    result = agent.evaluate(2)
    assert result["capped"] == 2 and result["lengths"] == [300, 300] and result["max_steps"] == 300
    timed = TRPO("CartPole-v1", config=SMALL.replace(eval_max_steps=5), seed=0)  # its own limit (500) counts
    result = timed.evaluate(1)
    assert result["capped"] == 0 and result["max_steps"] is None and result["lengths"][0] > 5
    agent.close()
    timed.close()


class _BigRewards(gym.Env):
    """Rewards of 1e38: each fits float32, their discounted sums do not."""

    observation_space = spaces.Box(-1, 1, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1e38, False, False, {}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_returns_that_overflow_float32_are_an_error_not_a_silent_skip() -> None:
    agent = TRPO(_BigRewards, config=SMALL, seed=0)
    with pytest.raises(EnvError, match=r"overflow float32 .* turn on normalize_reward"):
        agent.learn(256)
    agent.close()
    scaled = TRPO(_BigRewards, config=SMALL.replace(normalize_reward=True), seed=0)
    scaled.learn(256)  # the running return statistics (float64) scale them into range
    assert math.isfinite(scaled.history[-1]["advantage_std"])
    scaled.close()


def test_predict_acts_with_the_actor_the_agent_holds_now() -> None:
    """An actor set on the agent (not loaded into the old one) is the one predict and evaluate use."""
    agent = TRPO("CartPole-v1", seed=0, num_envs=1, vector_mode="sync")
    other = TRPO("CartPole-v1", seed=1, num_envs=1, vector_mode="sync")
    obs = np.stack([agent.observation_space.sample() for _ in range(64)])
    theirs = other.predict(obs)[0]
    assert not np.array_equal(agent.predict(obs)[0], theirs)  # two initializations, two policies
    agent.actor = other.actor
    np.testing.assert_array_equal(agent.predict(obs)[0], theirs)
    agent.close()
    other.close()
