"""obs_norm_update 'step': observation statistics that move at every step, as SB3's VecNormalize moves them, with
pi_old still exact (the batch holds the normalized observations the policy acted on), the same runs in every
layout that steps all envs in one process, and one-line refusals where the statistics cannot follow every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import metrics, trpo

from trpo import TRPO
from trpo.config import ConfigError, TRPOConfig
from trpo.normalization import ObsNormalizer
from trpo.policy import batch_noise
from trpo.resolve import resolve_config

STEP = {"obs_norm_update": "step", "normalize_obs": True}


@pytest.mark.numerics
def test_the_learner_replays_the_statistics_the_acting_policy_moved() -> None:
    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(50, 3, 4)) * [1, 10, 0.01, 100]).astype(np.float32)
    learner = ObsNormalizer(4, True, 10.0)
    learner.update(raw[0])  # statistics from earlier batches
    acting = learner.running()  # a copy, as sent to a worker
    seen = np.stack([acting(raw[t]) for t in range(len(raw))])
    normed, norms = learner.replay(raw)
    assert np.array_equal(normed, seen)  # bit for bit
    assert np.array_equal(learner.stats.mean, acting.stats.mean) and np.array_equal(learner.stats.var, acting.stats.var)
    assert learner.stats.count == acting.stats.count
    assert np.array_equal(norms[7](raw[7]), normed[7])
    # and the statistics are those of every row merged once
    rows = np.concatenate([raw[0], raw.reshape(-1, 4)]).astype(np.float64)
    np.testing.assert_allclose(learner.stats.mean, rows.mean(0), rtol=1e-5)  # the prior: count 1e-4
    np.testing.assert_allclose(learner.stats.var, rows.var(0), rtol=1e-5, atol=1e-6)  # var prior 1


@pytest.mark.numerics
@pytest.mark.parametrize("update", ["batch", "step"])
@pytest.mark.parametrize("mode", ["sync", "subprocess"])
def test_the_batch_holds_the_observations_the_policy_sampled_its_actions_from(update: str, mode: str) -> None:
    # A Gaussian policy's sampled action is mean(obs as the policy saw it) + sigma * noise: recomputing it from the
    # batch's observations and the batch's noise gives the actions back only if they are the observations it saw.
    config, _ = resolve_config("Pendulum-v1", "none", overrides={
        "num_envs": 2, "normalize_obs": True, "obs_norm_update": update, "vector_mode": mode, "num_workers": 1})
    agent = TRPO("Pendulum-v1", config=config, seed=3)
    try:
        collector = agent.learner.collector_or_new()
        collector.collect(agent.actor, 32, agent.sample_gen)  # move the statistics off their start
        generator = torch.Generator().manual_seed(11)
        batch = collector.collect(agent.actor, 64, generator)
        noise = batch_noise(agent.actor, agent.dist, 64, 2, -1, torch.Generator().manual_seed(11))
        with torch.no_grad():
            mean, log_std = agent.actor(batch.obs.reshape(-1, batch.obs.shape[-1]))
        expected = mean + log_std.exp() * torch.as_tensor(noise).reshape(mean.shape)
        torch.testing.assert_close(batch.actions.reshape(mean.shape), expected, rtol=1e-5, atol=1e-5)
        # and pi_old's log-probabilities are those of these observations
        torch.testing.assert_close(batch.log_probs.reshape(-1), agent.dist.log_prob((mean, log_std),
                                                                                   batch.actions.reshape(mean.shape)))
    finally:
        agent.close()


def test_the_first_batch_is_normalized_with_statistics_that_follow_it() -> None:
    # With 'batch', the first batch is normalized with the reset observations' statistics: MuJoCo's reset noise
    # is tiny, so most entries hit clip_obs; with 'step' the statistics follow the observations from the start.
    pytest.importorskip("mujoco")
    clipped = {}
    for update in ("batch", "step"):
        config, _ = resolve_config("Swimmer-v5", overrides={"vector_mode": "sync", "obs_norm_update": update})
        agent = TRPO("Swimmer-v5", config=config, seed=0)
        batch = agent.learner.collector_or_new().collect(agent.actor, 256, agent.sample_gen)
        clipped[update] = float((batch.obs.abs() >= config.clip_obs).float().mean())
        agent.close()
    assert clipped["batch"] > 0.3 and clipped["step"] < 0.01, clipped


def rows(agent: TRPO) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "fps"} for r in agent.history]


def test_runs_are_the_same_in_this_process_in_one_worker_and_in_a_resumed_run(tmp_path) -> None:
    runs = {}
    for mode in ("sync", "subprocess"):
        config, _ = resolve_config("Pendulum-v1", overrides={**STEP, "vector_mode": mode, "num_workers": 1,
                                                             "steps_per_env": 128})
        agent = TRPO("Pendulum-v1", config=config, seed=1)
        agent.learn(3 * config.batch_size)
        runs[mode] = (rows(agent), agent.obs_norm.stats.state_dict())
        agent.close()
    assert runs["sync"][0] == runs["subprocess"][0]
    assert all(torch.equal(runs["sync"][1][k], runs["subprocess"][1][k]) for k in runs["sync"][1])
    # through the CLI: train, checkpoint every update, resume further, evaluate
    run = tmp_path / "run"
    first = trpo("train", "--env", "Pendulum-v1", "--normalize-obs", "--obs-norm-update", "step",
                 "--steps-per-env", "128", "--total-steps", "512", "--checkpoint-every", "1", "--eval-episodes", "1",
                 "--no-progress", "--run-dir", str(run))
    assert first.returncode == 0, first.stderr
    more = trpo("train", "--resume", str(run), "--total-steps", "768", "--no-progress")
    assert more.returncode == 0, more.stderr
    assert [r["update"] for r in metrics(run)] == [1, 2, 3]
    assert TRPO.load(run).config.obs_norm_update == "step"


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["sync", "subprocess", "ray", "envpool"]), envs=st.integers(1, 4),
       workers=st.integers(0, 4), vine=st.booleans(), normalize=st.booleans())
def test_step_statistics_are_refused_in_one_line_where_they_cannot_follow_every_step(
        mode: str, envs: int, workers: int, vine: bool, normalize: bool) -> None:
    fields = dict(obs_norm_update="step", normalize_obs=normalize, vector_mode=mode, num_envs=envs,
                  num_workers=min(workers, envs), sampling="vine" if vine else "single_path", vine_states=4,
                  steps_per_env=8)
    split = mode in ("subprocess", "ray") and fields["num_workers"] != 1 and envs > 1
    if normalize and not split and not vine:
        assert TRPOConfig(**fields).obs_norm_update == "step"
        return
    with pytest.raises(ConfigError) as err:
        TRPOConfig(**fields)
    assert "\n" not in str(err.value) and "obs_norm_update 'step'" in str(err.value)


def test_image_observations_stay_unnormalized_with_step_statistics() -> None:
    # normalize_obs never applies to images: 'step' must not start normalizing them either
    from trpo_testenvs import PixelSideEnv

    config = TRPOConfig(**STEP, num_envs=2, steps_per_env=8)
    agent = TRPO(PixelSideEnv, config=config, seed=0)
    try:
        batch = agent.learner.collector_or_new().collect(agent.actor, 8, agent.sample_gen)
        assert batch.obs.dtype == torch.uint8 and int(batch.obs.max()) > 1  # raw pixels
    finally:
        agent.close()
