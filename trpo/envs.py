"""Making envs (an id, 'module:EnvId', a factory or an instance; ALE and MinAtar ids with their preprocessing)
and what the user's env does wrong: each failure one EnvError naming the env, its index and id, and the call.
It knows nothing of networks, rollouts or training and writes no file. It makes what it is given: whether a stored
run's env id or wrappers may be imported at all is decided before, by trust.py through loading.py."""

from __future__ import annotations

import importlib
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from trpo.config import TRPOConfig
from trpo.errors import EnvError as EnvError  # defined there; importable here too
from trpo.extras import install_hint
from trpo.observations import MAX_REWARD, ObsEncoder, ObservationError
from trpo.resolve import resolve_config
from trpo.trust import split_path

EnvSpec = str | Callable[[], gym.Env] | gym.Env


def env_failure(exc: Exception, call: str, index: int | None = None, env: gym.Env | None = None) -> EnvError:
    """An exception raised by the user's env (or by encoding what it returned), as one clear EnvError naming the
    env (its index and id) and the call."""
    which = _env_name(env, index)
    message = " ".join(str(exc).split())
    if isinstance(exc, ObservationError):
        return EnvError(f"{which} returned a bad observation from {call}: {message}")
    return EnvError(f"{which} raised {type(exc).__name__} in {call}" + (f": {message}" if message else ""))


def _env_name(env: gym.Env | None, index: int | None) -> str:
    """'env 3 (Hopper-v5)', 'the environment (Hopper-v5)', or without the id where the env has none."""
    name = "the environment" if index is None else f"env {index}"
    spec = getattr(env, "spec", None)
    return f"{name} ({spec.id})" if spec is not None else name


def close_env(env: gym.Env, index: int | None = None) -> None:
    """env.close(), with what the user's env raises there as one EnvError."""
    try:
        env.close()
    except Exception as exc:
        raise env_failure(exc, "close()", index, env) from exc


def check_reward(reward: float, env: gym.Env, index: int | None, step: int) -> None:
    """A reward must be a finite number that float32 can hold: EnvError naming the env and the step otherwise."""
    if not math.isfinite(reward):
        raise EnvError(f"{_env_name(env, index)} returned a non-finite reward ({reward}) at step {step} of its "
                       "episode")
    if abs(reward) > MAX_REWARD:
        raise EnvError(f"{_env_name(env, index)} returned the reward {reward!r} at step {step} of its episode, "
                       f"larger than float32 holds ({MAX_REWARD:.3g})")


def make_env(spec: EnvSpec, **make_kwargs: Any) -> gym.Env:
    """One env from an id (also 'module:EnvId'; `make_kwargs` go to gym.make), a factory, or an existing
    instance."""
    if isinstance(spec, gym.Env):
        return spec
    if callable(spec):
        try:
            env = spec()
        except EnvError:  # an EnvMaker's own, already one clear line (a wrapper refused or missing)
            raise
        except Exception as exc:
            raise env_failure(exc, "its factory") from exc
        if not isinstance(env, gym.Env):
            raise EnvError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
        return env
    if not isinstance(spec, str):
        raise EnvError(f"env must be an id, a factory or a gymnasium.Env, got {type(spec).__name__}")
    if not spec.strip():
        raise EnvError("the env id is empty")
    try:
        if spec.startswith("ALE/"):
            return make_atari(spec)
        if spec.startswith("MinAtar/"):
            _register_minatar()
        return gym.make(spec, **make_kwargs)
    except EnvError:  # a missing game package, said as it is
        raise
    except gym.error.UnregisteredEnv as exc:
        raise EnvError(f"unknown environment id {spec!r}: {exc}") from exc
    except gym.error.DependencyNotInstalled as exc:  # mujoco or Box2D missing: the extra to install, not Gymnasium's
        raise EnvError(f"cannot make environment {spec!r}: {missing_dependency(exc)}") from exc
    except (gym.error.Error, ModuleNotFoundError) as exc:
        raise EnvError(f"cannot make environment {spec!r}: {exc}") from exc
    except Exception as exc:  # the env's own constructor, or the module that registers it, failed
        text = f"{type(exc).__name__}: {exc}"
        if gl_failure(text):  # MuJoCo's renderer, loaded as MUJOCO_GL says
            raise EnvError(f"cannot make environment {spec!r}: {gl_message(text)}") from exc
        raise EnvError(f"cannot make environment {spec!r}: {text}") from exc


# Gymnasium's extras that trpo's extras of the same name install (pyproject.toml).
GYMNASIUM_EXTRAS = ("mujoco", "box2d")


def missing_dependency(exc: Exception) -> str:
    """Gymnasium's 'MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`' as the trpo extra that installs
    it, with the pip of the Python running trpo (the extras of Gymnasium that trpo's own extras carry: mujoco, box2d);
    any other missing package as Gymnasium says it."""
    text = " ".join(str(exc).split())
    match = re.search(r"gymnasium\[([\w-]+)\]", text)
    if match is None or match.group(1) not in GYMNASIUM_EXTRAS:
        return text
    return f"{text.split(',')[0].rstrip('.')}: {install_hint(match.group(1))}"


def gl_failure(text: str) -> bool:
    """Whether an error's text is OpenGL's (MuJoCo rendering without a working MUJOCO_GL backend)."""
    return any(word in text for word in ("OpenGL", "glGetError", "EGL", "OSMesa", "GLFW", "mjr_makeContext"))


def gl_message(text: str) -> str:
    setting = os.environ.get("MUJOCO_GL")
    now = f" (MUJOCO_GL={setting} here)" if setting else ""
    return (f"MuJoCo cannot render here{now}: {text}; set MUJOCO_GL=egl (a GPU's or Mesa's EGL) or MUJOCO_GL=osmesa "
            "(software, libosmesa) to one this machine has")


@dataclass(frozen=True)
class EnvMaker:
    """An env (an id or a factory) with the config's env options (TRPOConfig.env_kwargs, max_episode_steps,
    env_wrappers): gym.make(id, max_episode_steps=..., **kwargs), then each wrapper in order. A picklable
    factory, so that worker processes, Ray actors and the evaluation env all make the same env."""

    base: str | Callable[[], gym.Env]
    kwargs: dict[str, Any] | None = None
    max_episode_steps: int | None = None
    wrappers: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __call__(self) -> gym.Env:
        base, kwargs = self.base, self.kwargs or {}
        plain_id = isinstance(base, str) and not base.startswith(("ALE/", "MinAtar/"))
        if kwargs and not plain_id:
            raise EnvError("env_kwargs go to gym.make: they need a Gymnasium env id (not a factory, an ALE/ or a "
                           f"MinAtar/ id); got {base!r}")
        if plain_id:
            options = dict(kwargs, **({} if self.max_episode_steps is None else
                                      {"max_episode_steps": self.max_episode_steps}))
            env = make_env(base, **options)
        else:
            env = make_env(base)
            if self.max_episode_steps is not None:  # outside the preprocessing: counts agent steps
                env = gym.wrappers.TimeLimit(env, self.max_episode_steps)
        for path, wrapper_kwargs in self.wrappers:
            wrapper = _import_wrapper(path)
            try:
                env = wrapper(env, **wrapper_kwargs)
            except Exception as exc:
                raise EnvError(f"cannot wrap the env in {path}: {type(exc).__name__}: {exc}") from exc
        return env


def _import_wrapper(path: str) -> type[gym.Wrapper]:
    """'module:Class' or 'module.Class' -> the class, or EnvError naming what is missing. Only a gymnasium.Wrapper
    subclass is returned, to be called: a stored config naming any other callable (os:system) is refused here."""
    module, name = split_path(path)
    try:
        wrapper = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise EnvError(f"cannot import the wrapper {path}: {exc}") from exc
    except AttributeError:
        raise EnvError(f"cannot import the wrapper {path}: module {module} has no {name}") from None
    if not (isinstance(wrapper, type) and issubclass(wrapper, gym.Wrapper)):
        raise EnvError(f"env_wrappers: {path} is not a Gymnasium wrapper class (a subclass of gymnasium.Wrapper); "
                       "only those are applied")
    return wrapper


def with_options(spec: EnvSpec, env_kwargs: dict[str, Any] | None, max_episode_steps: int | None,
                 wrappers: tuple[tuple[str, dict[str, Any]], ...]) -> EnvSpec:
    """`spec` made with the env options, or `spec` itself when there are none. An instance takes none (it is made
    already): EnvError."""
    if not (env_kwargs or max_episode_steps is not None or wrappers):
        return spec
    if isinstance(spec, gym.Env):
        raise EnvError("env options (env_kwargs, max_episode_steps, env_wrappers) need an env id or a factory, not "
                       "an env instance")
    return EnvMaker(spec, env_kwargs, max_episode_steps, wrappers)


def make_atari(env_id: str) -> gym.Env:
    """An 'ALE/Name-v5' game with the standard preprocessing (Machado et al. 2018 via Gymnasium's wrappers):
    up to 30 no-op starts, 4 frames per action (max of the last two), 84 x 84 greyscale, 4 frames stacked
    (obs 4 x 84 x 84 uint8); sticky actions as the v5 games define them (per frame, probability 0.25), drawn by
    Gymnasium's StickyAction wrapper from the env's RNG rather than inside ALE, whose saved states do not carry
    the last action (vine sampling restores states); episodes end at game over."""
    try:
        import ale_py
    except ImportError as exc:
        raise EnvError(f"{env_id} needs ale-py: {install_hint('atari')}") from exc
    gym.register_envs(ale_py)
    sticky = gym.spec(env_id).kwargs.get("repeat_action_probability", 0.0)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0)  # AtariPreprocessing skips the frames
    if sticky > 0:
        env = gym.wrappers.StickyAction(env, repeat_action_probability=sticky)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    return gym.wrappers.FrameStackObservation(env, 4)


def _register_minatar() -> None:
    """MinAtar registers its 'MinAtar/Name-v0/v1' ids only when asked."""
    try:
        from minatar.gym import register_envs
    except ImportError as exc:
        raise EnvError(f"MinAtar games need minatar: {install_hint('minatar')}") from exc
    if "MinAtar/Breakout-v1" not in gym.registry:
        register_envs()


def has_time_limit(env: gym.Env) -> bool:
    """Whether the env ends its episodes after a number of steps by itself: a TimeLimit wrapper (a registered
    max_episode_steps adds one) anywhere in its wrapper chain."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return True
        env = env.env
    return False


def resolve_env_config(env: EnvSpec, env_id: str | None, preset: str | None = "auto",
                       file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                       made: gym.Env | None = None) -> tuple[TRPOConfig, str | None]:
    """resolve.resolve_config for `env`: with 'auto', an env no preset names takes the preset its observation space
    calls for (resolve.VECTOR_PRESET), read from the env made with the config's env options and closed again, or
    from `made` (an env the caller already made from `env`, left open) where the config has no env options."""
    config, name = resolve_config(env_id, preset, file_values, overrides)
    if name is None and preset == "auto":
        spec = with_options(env, config.env_kwargs, config.max_episode_steps, config.env_wrappers)
        probe = made if made is not None and spec is env else make_env(spec)
        try:
            space = probe.observation_space
        finally:
            if probe is not made and probe is not spec:  # an env the caller made or gave stays open
                close_env(probe)
        config, name = resolve_config(env_id, preset, file_values, overrides, observation_space=space)
    return config, name


def agent_config(env: EnvSpec, config: TRPOConfig | None,
                 overrides: dict[str, Any]) -> tuple[TRPOConfig, str | None, gym.Env | None]:
    """TRPO's config for `env`: `config` with `overrides` replaced, or without one the env's preset resolved with
    them (a factory's env, made to read its registered id, is returned for reuse, else None), and for an env
    instance the preset's settings that an instance cannot keep changed (`_one_env_in_process`). Returns
    (config, preset name, the factory's env)."""
    if config is not None:
        return (TRPOConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config), None, None
    probe, preset_id = None, env_id_of(env)
    if preset_id is None and callable(env) and not isinstance(env, gym.Env):
        probe = make_env(env)  # a factory whose env has a registered id keeps that id's preset
        preset_id = probe.spec.id if probe.spec is not None else None
    config, preset = resolve_env_config(env, preset_id, "auto", overrides=overrides, made=probe)
    if isinstance(env, gym.Env):
        config = _one_env_in_process(config, set(overrides))
    return config, preset, probe


def _one_env_in_process(config: TRPOConfig, given: set[str]) -> TRPOConfig:
    """The preset's config for an env instance: one env, stepped in this process (an instance can neither be copied
    into more envs nor sent to worker processes), with the preset's batch size, where the fields `given` leave it
    open; a num_envs > 1 or a vector_mode other than sync that the user set keeps its clear error. Said as a
    UserWarning, not a print: the library stays silent otherwise, yet the user must learn that the preset's
    settings changed; a warning shows once, points at their line, and can be filtered or made an error."""
    if ("num_envs" in given and config.num_envs != 1) or ("vector_mode" in given and config.vector_mode != "sync"):
        return config  # the user's own choice, refused with its error when training starts
    changes: dict[str, Any] = {}
    if config.num_envs != 1 and "num_envs" not in given:
        changes["num_envs"] = 1
        if "steps_per_env" not in given:
            changes["steps_per_env"] = config.batch_size
    if config.vector_mode != "sync" and "vector_mode" not in given:
        changes["vector_mode"] = "sync"
        if "num_workers" not in given:
            changes["num_workers"] = 0
    if not changes:
        return config
    said = ", ".join(f"{name} {getattr(config, name)} -> {value}" for name, value in changes.items()
                     if name != "num_workers")
    warnings.warn(f"trpo: an env instance is one env stepped in this process, so the preset's settings changed: "
                  f"{said}; pass an env id or a factory to keep them", UserWarning, stacklevel=4)
    return config.replace(**changes)


def env_id_of(spec: EnvSpec) -> str | None:
    """The id to store in configs and checkpoints, when there is one."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, EnvMaker):
        return env_id_of(spec.base)
    if isinstance(spec, gym.Env) and spec.spec is not None:
        return spec.spec.id
    return None


def check_masks(encoder: ObsEncoder, obs: np.ndarray, first_index: int) -> None:
    """Every env about to act (rows of obs, env first_index onwards) has a valid action in each sub-action."""
    bad = encoder.empty_mask_row(obs)
    if bad is not None:
        raise EnvError(f"env {first_index + bad} gave an action_mask that allows no action")

