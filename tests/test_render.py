"""Watching and recording: `trpo eval --video` writes a file that decodes to the episodes' frames (classic control
through pygame, MuJoCo headless through EGL where this machine has it), and what cannot render says why in one
line (no display for --render, a MUJOCO_GL backend this machine lacks, a factory without render_mode)."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from test_cli import trained_run
from test_cli import trpo as trpo_cli

from trpo import TRPO, TRPOConfig
from trpo.render import RenderError

iio = pytest.importorskip("imageio.v3")
pytest.importorskip("imageio_ffmpeg")
pytest.importorskip("pygame")

SMALL = TRPOConfig(num_envs=1, steps_per_env=64, actor_hidden=(8,), critic_hidden=(8,), cg_iters=3, value_epochs=1,
                   eval_episodes=1)


def test_a_video_decodes_to_one_frame_per_step_and_reset(tmp_path: Path) -> None:
    agent = TRPO("CartPole-v1", config=SMALL.replace(max_episode_steps=30), seed=0)
    plain = agent.evaluate(2)
    result = agent.evaluate(2, video=tmp_path / "cartpole.mp4")
    assert result["returns"] == plain["returns"]  # the same episodes, recorded
    frames = iio.imread(tmp_path / "cartpole.mp4")
    assert frames.shape == (sum(result["lengths"]) + 2, 400, 600, 3) == (result["frames"], 400, 600, 3)
    assert frames.std() > 0  # not blank
    agent.evaluate(1, video=tmp_path / "cartpole.gif")  # pillow may merge frames that look alike
    assert iio.imread(tmp_path / "cartpole.gif").shape[0] > 1
    agent.close()


def test_cli_records_mujoco_headless_where_egl_works(tmp_path: Path) -> None:
    run = trained_run(tmp_path, "Hopper-v5")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL")}
    video = tmp_path / "hopper.mp4"
    res = _cli(["eval", str(run), "--episodes", "1", "--video", str(video)], env)
    if res.returncode == 0:  # EGL here (chosen when there is no display)
        assert iio.imread(video).shape[0] > 1 and "video of" in res.stdout
    else:  # no EGL: one line naming the variable to set
        assert res.returncode == 2 and "MUJOCO_GL" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    res = _cli(["eval", str(run), "--episodes", "1", "--video", str(tmp_path / "x.mp4")], {**env, "MUJOCO_GL": "nope"})
    assert res.returncode != 0 and "MUJOCO_GL" in res.stderr + res.stdout


def _cli(args: list[str], env: dict[str, str]):
    import subprocess
    import sys

    tests = str(Path(__file__).parent)
    env = dict(env, PYTHONPATH=os.pathsep.join([tests, env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "trpo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=240)


def test_what_cannot_render_says_why_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    with pytest.raises(RenderError, match="--render needs a display"):
        agent.evaluate(1, render=True)
    agent.close()
    factory = TRPO(lambda: gym.make("CartPole-v1"), config=SMALL, seed=0)
    with pytest.raises(RenderError, match="render_mode='rgb_array'"):
        factory.evaluate(1, video=tmp_path / "f.mp4")
    factory.close()
    ok = TRPO(lambda: gym.make("CartPole-v1", render_mode="rgb_array"), config=SMALL, seed=0)
    assert ok.evaluate(1, video=tmp_path / "ok.mp4")["frames"] > 1
    ok.close()
    agent = TRPO("CartPole-v1", config=SMALL, seed=0)
    with pytest.raises(RenderError, match="cannot write the video"):
        agent.evaluate(1, video=tmp_path / "no_such_dir" / "v.mp4")
    agent.close()
    assert np.isfinite(1.0)
    res = trpo_cli("eval", "no_such_run", "--render")
    assert res.returncode == 2
