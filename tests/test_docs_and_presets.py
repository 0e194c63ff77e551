"""Presets resolve from env ids and run on their envs (the documentation: tests/test_docs.py)."""

from __future__ import annotations

import pytest

from trpo import TRPO, TRPOConfig
from trpo.config import ConfigError
from trpo.resolve import PRESETS, preset_name_for, resolve_config


@pytest.mark.parametrize("env_id,name", [("CartPole-v1", "CartPole"), ("Hopper-v5", "Hopper"),
                                         ("gymnasium.envs:HalfCheetah-v5", "HalfCheetah"), ("Unknown-v0", None),
                                         ("MinAtar/SpaceInvaders-v1", "MinAtar"), ("ALE/Breakout-v5", None),
                                         ("Ant-v5", "Ant-v5"), ("gymnasium.envs:Ant-v5", "Ant-v5"), ("Ant-v4", "Ant")])
def test_presets_resolve_from_env_ids(env_id: str, name: str | None) -> None:
    assert preset_name_for(env_id) == name


def test_env_kwargs_add_to_the_presets_key_by_key() -> None:
    leave_out = {"include_cfrc_ext_in_observation": False}
    assert resolve_config("Ant-v5")[0].env_kwargs == leave_out
    assert resolve_config("Ant-v4")[0].env_kwargs is None  # Ant-v4 has no such argument (nor contact forces)
    cfg, _ = resolve_config("Ant-v5", file_values={"env_kwargs": {"ctrl_cost_weight": 0.1}},
                            overrides={"env_kwargs": '{"healthy_reward": 2}'})
    assert cfg.env_kwargs == {**leave_out, "ctrl_cost_weight": 0.1, "healthy_reward": 2}
    cfg, _ = resolve_config("Ant-v5", overrides={"env_kwargs": '{"include_cfrc_ext_in_observation": true}'})
    assert cfg.env_kwargs == {"include_cfrc_ext_in_observation": True}
    assert resolve_config("Ant-v5", preset="none", overrides={"env_kwargs": "{}"})[0].env_kwargs == {}
    assert PRESETS["Ant-v5"] == {**PRESETS["Ant"], "env_kwargs": leave_out}  # the same settings otherwise


def test_the_ant_v5_preset_observes_what_ant_v4_does() -> None:
    pytest.importorskip("mujoco")
    v5, v4 = TRPO("Ant-v5"), TRPO("Ant-v4")
    try:
        assert v5.preset == "Ant-v5" and v5.observation_space.shape == v4.observation_space.shape == (27,)
    finally:
        v5.close()
        v4.close()


def test_preset_precedence_and_errors() -> None:
    cfg, name = resolve_config("HalfCheetah-v5")
    assert name == "HalfCheetah" and cfg.max_kl == 0.01 and cfg.num_envs == 16 and cfg.normalize_obs
    assert cfg.cg_iters == 25
    cfg, _ = resolve_config("HalfCheetah-v5", file_values={"max_kl": 0.02}, overrides={"max_kl": "0.03"})
    assert cfg.max_kl == 0.03
    cfg, name = resolve_config("HalfCheetah-v5", preset="none")
    assert name is None and cfg == TRPOConfig()
    with pytest.raises(ConfigError, match="unknown config field 'max_kll'"):
        resolve_config("CartPole-v1", file_values={"max_kll": 0.1})
    with pytest.raises(ConfigError, match="gamma must lie in"):
        TRPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="num_workers must be <= num_envs"):
        TRPOConfig(num_envs=2, num_workers=3)
    for values in PRESETS.values():
        TRPOConfig(**values)  # every preset is a valid config


@pytest.mark.parametrize("name,per_dim", [("Walker2d", 0.01), ("Ant", 0.01), ("Humanoid", 0.01), ("Swimmer", 0.01),
                                          ("Reacher", 0.01)])
def test_mujoco_presets_match_sb3_contribs_trust_region_on_the_joint_kl(name: str, per_dim: float) -> None:
    # sb3-contrib averages its KL over action dimensions: its max KL per dimension times action_dim is ours.
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    action_dim = gym.make(f"{name}-v5").action_space.shape[0]
    assert PRESETS[name]["max_kl"] == pytest.approx(per_dim * action_dim)
    assert PRESETS[name]["cg_damping"] == pytest.approx(0.1 * action_dim)  # (Hopper, HalfCheetah: tuned apart)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_mujoco_presets_train(env_id: str) -> None:
    pytest.importorskip("mujoco")
    config, _ = resolve_config(env_id, overrides={"steps_per_env": 128, "value_epochs": 1})
    agent = TRPO(env_id, config=config, seed=0)
    agent.learn(512)
    assert all(row["kl"] <= config.max_kl for row in agent.history)
    assert agent.history[-1]["step_accepted"]
    agent.close()
