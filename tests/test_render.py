"""Watching and recording: `trpo eval --video` writes a file that decodes to the episodes' frames (classic control
through pygame, MuJoCo headless through EGL where this machine has it), and what cannot render says why in one
line (no display for --render, a MUJOCO_GL backend this machine lacks, a factory without render_mode)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from clitools import error_lines, run_cli, run_cli_output
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
    else:  # no EGL: one error line naming the variable to set (after the line saying what was to be recorded)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(error_lines(res.stderr)) == 1 and "MUJOCO_GL" in error_lines(res.stderr)[0], res.stderr
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


def test_trpo_eval_video_records_one_episode_by_default_and_shows_its_frames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--total-steps", "256", "--run-dir", str(run), "--vector-mode", "sync", "--num-envs",
                    "1", "--steps-per-env", "128", "--value-epochs", "1", "--no-progress"])[0] == 0
    monkeypatch.setattr("trpo.logger.PLAIN_INTERVAL", 0.0)  # as if every frame took the 5 s between plain lines
    video = tmp_path / "cartpole.mp4"
    code, out, err = run_cli_output(["eval", str(run), "--video", str(video)])
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == (f"trpo: recording 1 episode of CartPole-v1 to {video} (the default with --video; --episodes "
                        "N for more)")
    (said, written) = out.splitlines()
    assert " over 1 episode (checkpoint at step 256)" in said
    frames = int(re.fullmatch(rf"trpo: video of (\d+) frames written to {re.escape(str(video))}", written)[1])
    assert frames == iio.imread(video).shape[0]
    shown = [re.fullmatch(r"0/1 episodes  (\d+) frames  [\d,.]+ frames/s  elapsed \d\d:\d\d  ETA --:--", line)
             for line in lines[1:] if "XDG_RUNTIME_DIR" not in line]  # pygame's own complaint
    assert all(shown) and [int(m[1]) for m in shown if m] == list(range(2, frames + 1))  # from the first step's
    code, out, _ = run_cli_output(["eval", str(run), "--video", str(video), "--episodes", "2"])
    assert code == 0 and " over 2 episodes " in out and int(out.split("video of ")[1].split()[0]) > frames


def test_a_video_file_that_cannot_be_written_is_blamed_not_the_env(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = trained_run(tmp_path, "CartPole-v1")
    unwritable = Path("/sys/v.mp4") if os.geteuid() == 0 else tmp_path / "read-only" / "v.mp4"  # root writes anywhere
    if os.geteuid() != 0:
        unwritable.parent.mkdir(mode=0o555)
    for video, said in ((tmp_path / "video", f"the video {tmp_path / 'video'} has no extension to say its format: "
                         "name it .mp4, .gif, ..."),
                        (unwritable, f"cannot write the video {unwritable}: Permission denied")):
        code, _, err = run_cli_output(["eval", str(run), "--video", str(video)])
        assert code == 2 and error_lines(err) == [f"trpo: error: {said}"], err
    # ffmpeg failing in the middle (a full disk): the file's error, not the env raising in step().
    import imageio.v2  # here: the module is skipped above where imageio is missing

    class Full:
        def append_data(self, image: np.ndarray) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    monkeypatch.setattr(imageio.v2, "get_writer", lambda *args, **kwargs: Full())
    code, _, err = run_cli_output(["eval", str(run), "--video", str(tmp_path / "v.mp4")])
    assert code == 2 and error_lines(err) == [
        f"trpo: error: cannot write the video {tmp_path / 'v.mp4'}: [Errno 28] No space left on device"], err
