"""Presets resolve from env ids and run on their envs (the documentation: tests/test_docs.py)."""

from __future__ import annotations

import pytest

from trpo import TRPO, TRPOConfig
from trpo.config import PRESETS, ConfigError, preset_name_for, resolve_config


@pytest.mark.parametrize("env_id,name", [("CartPole-v1", "CartPole"), ("Hopper-v5", "Hopper"),
                                         ("gymnasium.envs:HalfCheetah-v5", "HalfCheetah"), ("Unknown-v0", None),
                                         ("MinAtar/SpaceInvaders-v1", "MinAtar"), ("ALE/Breakout-v5", None)])
def test_presets_resolve_from_env_ids(env_id: str, name: str | None) -> None:
    assert preset_name_for(env_id) == name


def test_preset_precedence_and_errors() -> None:
    cfg, name = resolve_config("HalfCheetah-v5")
    assert name == "HalfCheetah" and cfg.max_kl == 0.24 and cfg.normalize_obs and cfg.cg_iters == 25
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


@pytest.mark.parametrize("name,per_dim", [("Walker2d", 0.01), ("Ant", 0.01), ("Humanoid", 0.01),
                                          ("HalfCheetah", 0.04), ("Swimmer", 0.01), ("Reacher", 0.01)])
def test_mujoco_presets_match_sb3_contribs_trust_region_on_the_joint_kl(name: str, per_dim: float) -> None:
    # sb3-contrib averages its KL over action dimensions: its max KL per dimension times action_dim is ours.
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    action_dim = gym.make(f"{name}-v5").action_space.shape[0]
    assert PRESETS[name]["max_kl"] == pytest.approx(per_dim * action_dim)
    assert PRESETS[name]["cg_damping"] == pytest.approx(0.1 * action_dim)  # (Hopper is tuned apart: 1M returns)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_mujoco_presets_train(env_id: str) -> None:
    pytest.importorskip("mujoco")
    config, _ = resolve_config(env_id, overrides={"steps_per_env": 128, "value_epochs": 1})
    agent = TRPO(env_id, config=config, seed=0)
    agent.learn(512)
    assert all(row["kl"] <= config.max_kl for row in agent.history)
    assert agent.history[-1]["step_accepted"]
    agent.close()
