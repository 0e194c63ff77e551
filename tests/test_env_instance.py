"""An env instance with the defaults trains as SB3 users expect: one env stepped in this process, the preset's batch
size kept, and a warning that says what changed; what the user set themselves keeps its clear error."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest

from trpo import TRPO, EnvError
from trpo.resolve import PRESETS


@pytest.mark.parametrize(("env_id", "preset", "changed"), [
    ("CartPole-v1", "CartPole", "num_envs 2 -> 1, steps_per_env 512 -> 1024, vector_mode subprocess -> sync"),
    ("Pendulum-v1", "Pendulum", "num_envs 2 -> 1, steps_per_env 1024 -> 2048"),
])
def test_an_env_instance_trains_with_the_defaults_in_one_env(env_id: str, preset: str, changed: str) -> None:
    with pytest.warns(UserWarning) as said:
        agent = TRPO(gym.make(env_id), value_epochs=1)
    (warning,) = said
    assert str(warning.message) == ("trpo: an env instance is one env stepped in this process, so the preset's "
                                    f"settings changed: {changed}; pass an env id or a factory to keep them")
    assert warning.filename == __file__  # points at the user's line
    cfg = agent.config
    assert (cfg.num_envs, cfg.vector_mode, cfg.num_workers) == (1, "sync", 0) and agent.preset == preset
    assert cfg.batch_size == PRESETS[preset]["num_envs"] * PRESETS[preset]["steps_per_env"]
    agent.learn(cfg.batch_size)  # one update
    assert agent.num_steps == cfg.batch_size and agent.num_updates == 1
    agent.close()


def test_an_instance_the_preset_already_fits_changes_nothing_and_says_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent = TRPO(gym.make("Acrobot-v1"))  # its preset: one env in this process
    assert agent.config.num_envs == 1 and agent.config.steps_per_env == 2048
    agent.close()


@pytest.mark.parametrize(("given", "message"), [
    ({"num_envs": 2}, "an env instance cannot be sent to subprocess workers"),  # the preset's mode, unchanged
    ({"num_envs": 2, "vector_mode": "sync"}, "an env instance serves only num_envs=1"),
    ({"vector_mode": "subprocess"}, "an env instance cannot be sent to subprocess workers"),
])
def test_what_the_user_set_for_an_instance_keeps_its_error(given: dict, message: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing changed behind the user's back either
        agent = TRPO(gym.make("CartPole-v1"), **given)
    with pytest.raises(EnvError, match=message):
        agent.learn(1024)
    agent.close()
