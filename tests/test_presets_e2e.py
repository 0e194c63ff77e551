"""Every shipped preset, end to end, as a user runs it: `trpo train` writes checkpoints, `trpo eval` reads them,
`trpo train --resume` continues to a larger budget (each command through the CLI's main(), in this process: an
interpreter start is 2-3 s of importing torch, and test_cli.py starts real processes); and through the Python
API, save and load give the same actions. The presets keep their own settings (normalization, worker processes,
...); only the batch is made small. This is the class of test that catches a preset crashing at its first
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run_cli_output
from test_cli import metrics

from trpo import TRPO
from trpo.resolve import PRESET_ENVS, PRESETS, VECTOR_PRESET, preset_name_for, resolve_config
from trpo.rollout.collector import layout

STEPS = 64  # per env and update


def test_every_preset_is_covered() -> None:
    assert set(PRESET_ENVS) == set(PRESETS)  # a new preset must join these tests
    assert all(preset_name_for(env) == name for name, env in PRESET_ENVS.items() if name != VECTOR_PRESET)
    assert preset_name_for(PRESET_ENVS[VECTOR_PRESET]) is None


def _needs(env_id: str) -> None:
    if env_id.endswith(("-v4", "-v5")):
        pytest.importorskip("mujoco")
    if env_id.startswith("MinAtar/"):
        pytest.importorskip("minatar")
    if env_id.startswith(("LunarLander", "BipedalWalker")):
        pytest.importorskip("Box2D")


@pytest.mark.parametrize("name", list(PRESET_ENVS))
def test_preset_trains_checkpoints_evaluates_and_resumes_through_the_cli(tmp_path: Path, name: str) -> None:
    env_id = PRESET_ENVS[name]
    _needs(env_id)
    batch = resolve_config(env_id, name)[0].num_envs * STEPS
    run = tmp_path / "run"
    code, _, stderr = run_cli_output(["train", "--env", env_id, "--total-steps", str(2 * batch), "--steps-per-env",
                                      str(STEPS), "--checkpoint-every", "1", "--eval-episodes", "1", "--no-progress",
                                      "--run-dir", str(run)])
    assert code == 0, stderr
    # the worker layout the preset chose, said at start-up
    assert f"trpo: {layout(resolve_config(env_id, name)[0])}\n" in stderr
    assert f"(preset {name})" in stderr  # `auto` chose it
    for file in ("config.yaml", "metrics.jsonl", "checkpoints/latest.pt", "final.pt", "eval.json"):
        assert (run / file).is_file(), file
    assert [r["update"] for r in metrics(run)] == [1, 2]

    code, stdout, stderr = run_cli_output(["eval", str(run), "--episodes", "1", "--json"])
    assert code == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["env"] == env_id and result["step"] == 2 * batch and np.isfinite(result["mean_return"])

    code, _, stderr = run_cli_output(["train", "--resume", str(run), "--total-steps", str(3 * batch), "--no-progress"])
    assert code == 0, stderr
    assert [r["update"] for r in metrics(run)] == [1, 2, 3]
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["num_steps"] == 3 * batch and state["preset"] == name
    assert state["config"] == {**resolve_config(env_id, name)[0].to_dict(), "steps_per_env": STEPS,
                               "checkpoint_every": 1, "eval_episodes": 1}


@pytest.mark.parametrize("name", list(PRESET_ENVS))
def test_preset_saves_and_loads_through_the_api(tmp_path: Path, name: str) -> None:
    env_id = PRESET_ENVS[name]
    _needs(env_id)
    agent = TRPO(env_id, steps_per_env=STEPS, value_epochs=1, seed=1)
    assert agent.preset == name
    agent.learn(2 * agent.config.batch_size)
    agent.save(tmp_path / "agent.pt")
    loaded = TRPO.load(tmp_path / "agent.pt")
    obs = np.stack([agent.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(agent.predict(obs)[0], loaded.predict(obs)[0])
    assert loaded.config == agent.config and loaded.num_steps == agent.num_steps
    agent.close()
    loaded.close()
