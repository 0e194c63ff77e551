"""Env options (env_kwargs, max_episode_steps, env_wrappers): they visibly change the env in every rollout mode
and in evaluation, are recorded so that eval and resume make the same env, and bad values are one line."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import trpo as trpo_cli

from trpo import TRPO, ConfigError, EnvError, TRPOConfig

SMALL = TRPOConfig(num_envs=2, steps_per_env=64, actor_hidden=(8,), critic_hidden=(8,), cg_iters=3, value_epochs=1,
                   eval_episodes=2)
CLIP = ("gymnasium.wrappers:ClipReward", {"min_reward": -0.5, "max_reward": 0.5})


@pytest.mark.parametrize("mode", ["sync", "subprocess"])
def test_kwargs_limits_and_wrappers_reach_every_env(mode: str) -> None:
    # Counter-v0 (registered with a 7-step limit) terminates at step `terminate_at`: its kwargs shape the episodes.
    agent = TRPO("trpo_testenvs:Counter-v0", config=SMALL.replace(vector_mode=mode, num_workers=2,
                                                                 env_kwargs={"terminate_at": 3}), seed=0)
    agent.learn(128)
    assert {r["episode_length_mean"] for r in agent.history} == {3.0}
    assert agent.evaluate(2)["lengths"] == [3, 3]
    agent.close()
    # max_episode_steps replaces the registered limit (7), rather than adding a shorter one.
    longer = TRPO("trpo_testenvs:Counter-v0", config=SMALL.replace(vector_mode=mode, max_episode_steps=12), seed=0)
    longer.learn(256)
    assert longer.evaluate(2)["lengths"] == [12, 12]
    assert {r["episode_length_mean"] for r in longer.history} == {12.0}
    longer.close()
    # Wrappers in order: rewards clipped to 0.5, and the time appended to the observation.
    wrapped = TRPO("CartPole-v1", config=SMALL.replace(vector_mode=mode, env_wrappers=(
        CLIP, ("gymnasium.wrappers.TimeAwareObservation", {}))), seed=0)
    assert wrapped.observation_space.shape == (5,)
    wrapped.learn(128)
    result = wrapped.evaluate(2)
    assert result["returns"] == [0.5 * n for n in result["lengths"]]
    assert all(r["episode_return_mean"] == 0.5 * r["episode_length_mean"] for r in wrapped.history
               if r["episodes"])
    wrapped.close()


def test_options_are_recorded_and_eval_and_resume_make_the_same_env(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = trpo_cli("train", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", str(run), "--num-envs", "2",
                   "--steps-per-env", "64", "--eval-episodes", "2", "--no-progress", "--max-episode-steps", "20",
                   "--env-wrapper", 'gymnasium.wrappers:ClipReward={"min_reward": -0.5, "max_reward": 0.5}',
                   "--env-kwargs", '{"sutton_barto_reward": true}')
    assert res.returncode == 0, res.stderr
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["env"] == "CartPole-v1" and record["preset"] == "CartPole"  # the preset still from the id
    assert record["max_episode_steps"] == 20 and record["env_kwargs"] == {"sutton_barto_reward": True}
    assert record["env_wrappers"] == [{"gymnasium.wrappers:ClipReward": {"min_reward": -0.5, "max_reward": 0.5}}]
    ev = trpo_cli("eval", str(run), "--episodes", "3", "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout.splitlines()[-1])
    # Sutton and Barto's reward: 0 per step, -1 at failure; clipped to -0.5. Episodes at most 20 steps.
    assert max(result["lengths"]) <= 20
    assert all(r in (0.0, -0.5) for r in result["returns"])
    resumed = TRPO.resume(run)
    assert resumed.config.env_wrappers == (CLIP,) and resumed.config.max_episode_steps == 20
    resumed.train_until(512)
    assert all(r["episode_length_mean"] <= 20 for r in resumed.history if r["episodes"])
    resumed.close()
    refused = trpo_cli("train", "--resume", str(run), "--max-episode-steps", "30", "--no-progress")
    assert refused.returncode == 2 and "max_episode_steps cannot change" in refused.stderr


def test_a_factory_whose_env_has_an_id_keeps_its_preset() -> None:
    agent = TRPO(lambda: gym.make("Pendulum-v1"))
    assert agent.preset == "Pendulum" and agent.config.gamma == 0.9 and agent.env_id is None
    agent.close()
    with pytest.raises(EnvError, match=r"env options .* need an env id or a factory, not an env instance"):
        TRPO(gym.make("CartPole-v1"), config=SMALL.replace(max_episode_steps=5))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("env_kwargs", "{not json", "cannot read .* as a JSON object"),
    ("env_kwargs", "[1, 2]", "as a mapping of argument names to values"),
    ("env_kwargs", '{"bad key": 1}', "as a mapping of argument names to values"),
    ("max_episode_steps", "0", "max_episode_steps must be a positive integer"),
    ("max_episode_steps", "ten", "cannot read 'ten' as int"),
    ("env_wrappers", "no_module_colon", "as a wrapper class path"),
    ("env_wrappers", 'gymnasium.wrappers:ClipReward={"min"', "as a JSON object"),
    ("env_wrappers", "42", "as a wrapper class path"),
])
def test_bad_option_values_are_one_config_error(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TRPOConfig.from_dict({field: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("wrappers", "kwargs", "message"), [
    ((("no_such_module_xyz:Wrapper", {}),), None, "cannot import the wrapper no_such_module_xyz:Wrapper"),
    ((("gymnasium.wrappers:NoSuchWrapper", {}),), None, "module gymnasium.wrappers has no NoSuchWrapper"),
    ((("gymnasium.wrappers:ClipReward", {"nonsense": 1}),), None, "cannot wrap the env in gymnasium.wrappers:Clip"),
    ((), {"no_such_argument": 1}, "cannot make environment 'CartPole-v1': TypeError"),
])
def test_options_the_env_refuses_are_one_env_error(wrappers, kwargs, message: str) -> None:
    with pytest.raises(EnvError, match=message) as info:
        TRPO("CartPole-v1", config=SMALL.replace(env_wrappers=wrappers, env_kwargs=kwargs))
    assert "\n" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\{.{0,30}\}", fullmatch=True)),
       st.text(max_size=40))
def test_any_text_for_the_options_is_a_value_or_one_config_error(kwargs_text: str, wrapper_text: str) -> None:
    """The command line gives text: whatever it is, the result is a valid config or one ConfigError."""
    for field, text in (("env_kwargs", kwargs_text), ("env_wrappers", [wrapper_text]), ("max_episode_steps",
                                                                                          kwargs_text)):
        try:
            cfg = TRPOConfig.from_dict({field: text})
        except ConfigError as exc:
            assert "\n" not in str(exc)
        else:
            assert TRPOConfig.from_dict(cfg.to_dict()) == cfg  # and it round-trips through config.yaml
            value = getattr(cfg, field)
            assert value is None or isinstance(value, dict | tuple | int)
            if isinstance(value, dict):
                json.dumps(value)
    assert np.isfinite(0.0)
