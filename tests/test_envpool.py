"""vector_mode 'envpool': batches of the same shape and meaning as the other modes (true final observations,
terminations and time-limit truncations apart), deterministic for a seed, refused in one line where envpool
cannot serve, and the CLI's train / resume / eval on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import trpo as trpo_cli

from trpo import TRPO, EnvError, TRPOConfig

pytest.importorskip("envpool")

SMALL = TRPOConfig(num_envs=3, steps_per_env=64, value_epochs=1, cg_iters=5, vector_mode="envpool", num_workers=2,
                   eval_episodes=1)


def test_time_limits_truncate_with_the_true_final_observation() -> None:
    # CartPole cut at 10 steps: every episode of a barely trained policy ends by the limit or by falling, and the
    # batch keeps the final observation of each where the next row starts a new episode.
    agent = TRPO("CartPole-v1", config=SMALL.replace(max_episode_steps=10), seed=0)
    batch = agent.learner.collector_or_new().collect(agent.actor, 64, agent.sample_gen)
    ended = (batch.terminated | batch.truncated).numpy()
    truncated, terminated = batch.truncated.numpy(), batch.terminated.numpy()
    assert truncated.any() and not (truncated & terminated).any()
    starts = batch.starts.numpy()
    assert starts[0].all()
    np.testing.assert_array_equal(starts[1:], ended[:-1])  # an episode starts right after one ends
    obs, next_obs = batch.obs.numpy(), batch.next_obs.numpy()
    steps_alive = np.zeros(3, int)
    for t in range(64):
        steps_alive = np.where(starts[t], 1, steps_alive + 1)
        assert (truncated[t] == (steps_alive == 10) & ~terminated[t]).all()  # the limit, and only it, truncates
        for i in range(3 if t + 1 < 64 else 0):
            if not ended[t, i]:
                np.testing.assert_array_equal(next_obs[t, i], obs[t + 1, i])  # the same trajectory goes on
            else:
                assert not np.array_equal(next_obs[t, i], obs[t + 1, i])  # the final observation, not the reset one
    assert batch.episode_lengths and max(batch.episode_lengths) == 10
    agent.close()


def test_runs_are_deterministic_for_a_seed_and_learn() -> None:
    def rows(seed: int) -> list[dict]:
        agent = TRPO("CartPole-v1", config=SMALL.replace(steps_per_env=256), seed=seed)
        agent.learn(256 * 3 * 6)
        out = [{k: v for k, v in r.items() if not k.startswith("time") and k != "fps"} for r in agent.history]
        agent.close()
        return out

    first = rows(0)
    assert rows(0) == first
    assert rows(1) != first
    assert first[-1]["episode_return_mean"] > first[0]["episode_return_mean"]


def test_what_envpool_cannot_serve_is_refused_in_one_line() -> None:
    import gymnasium as gym

    cases = [
        (lambda: gym.make("CartPole-v1"), {}, "from an env id"),
        ("CartPole-v1", {"env_kwargs": {"sutton_barto_reward": True}}, "without env_kwargs or env_wrappers"),
        ("CartPole-v1", {"sampling": "vine"}, "envpool cannot save"),
        ("trpo_testenvs:Counter-v0", {}, "names a module's env"),
        ("Taxi-v4", {}, "envpool has no env 'Taxi-v4'"),
    ]
    for env, fields, message in cases:
        with pytest.raises(EnvError, match=message):
            agent = TRPO(env, config=SMALL.replace(**fields))
            try:
                agent.learn(64)
            finally:
                agent.close()


def test_cli_trains_resumes_and_evaluates_on_envpool(tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--num-envs", "2", "--steps-per-env", "128", "--value-epochs", "1", "--checkpoint-every", "1",
              "--eval-episodes", "2", "--no-progress"]
    res = trpo_cli("train", "--env", "Hopper-v5", "--vector-mode", "envpool", "--total-steps", "512", "--run-dir",
                   str(run), *common)
    assert res.returncode == 0, res.stderr
    switched = trpo_cli("train", "--resume", str(run), "--total-steps", "1024", "--vector-mode", "sync")
    assert switched.returncode == 2 and "cannot switch to or from vector_mode 'envpool'" in switched.stderr
    res = trpo_cli("train", "--resume", str(run), "--total-steps", "1024", "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [256, 512, 768, 1024]
    assert json.loads((run / "eval.json").read_text())["step"] == 1024
    res = trpo_cli("eval", str(run), "--episodes", "1", "--json")
    assert res.returncode == 0 and json.loads(res.stdout.splitlines()[-1])["episodes"] == 1
    assert torch.load(run / "final.pt", weights_only=False)["config"]["vector_mode"] == "envpool"
