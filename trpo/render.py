"""Watching and recording an agent: an env made to render ('rgb_array' frames for a video file, 'human' for a
window), and the video writer (imageio with its ffmpeg plugin: pip install 'trpo[video]').

MuJoCo renders without a display through EGL (a GPU's or Mesa's) or OSMesa (software), chosen by the MUJOCO_GL
variable before MuJoCo's renderer loads; where neither display nor MUJOCO_GL is set, recording sets MUJOCO_GL=egl.
Classic-control and Box2D envs draw with pygame (in the video extra).

It knows envs and frames, not policies or networks (which actions the episodes take is evaluation.py's); it writes
only the video at the path it is given, and the only environment variable it sets is MUJOCO_GL, where unset.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from trpo.envs import EnvError, EnvMaker, EnvSpec, gl_failure, gl_message, make_env
from trpo.extras import install_hint


class RenderError(EnvError):
    """The env cannot be rendered or recorded here; the message says what to install or set."""


def has_display() -> bool:
    """Whether a window can open: always on macOS and Windows; on Linux, an X11 or Wayland display."""
    return sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def render_env(spec: EnvSpec, mode: str) -> gym.Env:
    """The env of `spec` (with its env options) made to render in `mode` ('rgb_array' or 'human')."""
    if mode == "human" and not has_display():
        raise RenderError("--render needs a display (DISPLAY or WAYLAND_DISPLAY is not set); record a video with "
                          "--video FILE.mp4 instead")
    if mode == "rgb_array" and not has_display() and "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl"  # headless MuJoCo; must be set before its renderer is imported
    if isinstance(spec, str):
        env = make_env(spec, render_mode=mode)  # MuJoCo's renderer failing here: an EnvError naming MUJOCO_GL
    elif isinstance(spec, EnvMaker) and isinstance(spec.base, str):
        env = EnvMaker(spec.base, {**(spec.kwargs or {}), "render_mode": mode}, spec.max_episode_steps,
                       spec.wrappers)()
    else:
        env = make_env(spec)
        if env.render_mode != mode:
            raise RenderError(f"to render with mode {mode!r}, a factory or an env instance must make its env with "
                              f"render_mode={mode!r} (this one has {env.render_mode!r}); or pass an env id")
    return env


def frame(env: gym.Env) -> np.ndarray:
    """The env's current rgb_array frame, or RenderError saying what rendering needs here."""
    try:
        image = env.render()
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if gl_failure(text) or "mujoco" in type(exc).__module__:
            raise RenderError(gl_message(text)) from exc
        if "pygame" in text:  # classic control and Box2D draw with it
            raise RenderError(f"{text}; rendering this env needs pygame: {install_hint('video')}") from exc
        raise RenderError(f"the env cannot render an rgb_array frame: {text}") from exc
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise RenderError(f"the env's render() gave {type(image).__name__}, not an rgb_array frame")
    return image


class VideoWriter:
    """Frames to a video file (mp4, and what else imageio writes by the suffix: mkv, gif, ...); `close` finishes
    the file. What goes wrong with the file (no suffix, a path that cannot be written, ffmpeg failing on a full
    disk) is a RenderError naming the video: it happens during the episodes, whose errors would otherwise be
    said as the env's."""

    def __init__(self, path: str | Path, fps: float) -> None:
        try:
            import imageio.v2 as imageio
        except ImportError as exc:
            raise RenderError(f"recording a video needs imageio and imageio-ffmpeg: {install_hint('video')}") from exc
        self.path = Path(path)
        if not self.path.suffix:  # imageio would choose no writer, and fail at the first frame
            raise RenderError(f"the video {self.path} has no extension to say its format: name it .mp4, .gif, ...")
        existed = self.path.exists()
        try:  # before any episode: ffmpeg opens the file only at the first frame
            self.path.open("ab").close()
        except OSError as exc:
            raise RenderError(f"cannot write the video {self.path}: {exc.strerror or exc}") from exc
        options: dict[str, Any] = {"fps": fps}
        if self.path.suffix.lower() in (".mp4", ".mkv", ".mov", ".avi"):
            options["macro_block_size"] = 1  # any frame size, not only multiples of 16
        elif self.path.suffix.lower() == ".gif":  # pillow's GIF writer takes a duration per frame (it may merge
            options = {"duration": 1000.0 / fps, "loop": 0}  # frames that look alike)
        try:
            self.writer = imageio.get_writer(str(self.path), **options)
        except Exception as exc:  # no ffmpeg plugin, an unknown suffix
            if not existed:
                self.path.unlink(missing_ok=True)
            raise RenderError(f"cannot write the video {self.path}: {exc}; mp4 needs imageio-ffmpeg: "
                              f"{install_hint('video')}") from exc
        self.frames = 0

    def add(self, image: np.ndarray) -> None:
        try:
            self.writer.append_data(image)
        except Exception as exc:
            raise self._failed(exc) from exc
        self.frames += 1

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> RenderError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # not ffmpeg's command and output
        return RenderError(f"cannot write the video {self.path}: {first}")
