"""Config resolution: which TRPOConfig a run gets from an env id, a preset, a YAML file and command-line overrides.

Precedence, lowest first: field defaults < preset < YAML file < overrides (`resolve_config`). Owns the choice of a
preset for an env (`preset_name_for`, VECTOR_PRESET for flat vector observations), the shipped presets checked as
TRPOConfig fields (`load_presets`, `shipped_presets`, PRESETS, PRESET_STEPS, PRESET_ENVS) and reading a YAML config
file (`load_yaml`). Must not touch the fields themselves, their types, validation or coercion (trpo.config,
trpo.coerce) nor the preset files' format (trpo.presets): it imports trpo.config and trpo.presets, and neither imports
it (trpo.config forwards these names to it on first use, for old imports).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from trpo.config import TRPOConfig, coerce_fields
from trpo.errors import ConfigError
from trpo.presets import LazyMapping, Preset, PresetError, read_presets

VECTOR_PRESET = "vector"  # the preset of an env without one whose observations are a flat vector


def load_presets(directory: str | os.PathLike[str] | None = None) -> dict[str, Preset]:
    """The presets of the YAML files in `directory` (default: the shipped ones, trpo/presets/*.yaml) by name, each
    one's fields checked as TRPOConfig's; a ConfigError naming the file and the preset for the first bad one."""
    try:
        return read_presets(directory, check=_check_preset_fields)
    except PresetError as exc:
        raise ConfigError(str(exc)) from None


def _check_preset_fields(values: dict[str, Any]) -> None:
    # Strict, as Python values (no text coercion): a preset must hold what TRPOConfig takes as it is.
    known = {f.name for f in dataclasses.fields(TRPOConfig)}
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown config field {name!r}")
    TRPOConfig(**values)


@functools.cache
def shipped_presets() -> dict[str, Preset]:
    """The shipped presets by name (with their env, budget, fields and file), read and checked once per process."""
    return load_presets()


# Read on first use, so that importing this module opens no file. PRESETS: name -> its fields; PRESET_STEPS: the
# training budget (env steps) that goes with it; PRESET_ENVS: the env it was tuned on and is tested with end to end
# (the vector preset, having no env of its own: one it applies to).
PRESETS: Mapping[str, dict[str, Any]] = LazyMapping(lambda: {n: p.fields for n, p in shipped_presets().items()})
PRESET_STEPS: Mapping[str, int] = LazyMapping(lambda: {n: p.total_steps for n, p in shipped_presets().items()})
PRESET_ENVS: Mapping[str, str] = LazyMapping(lambda: {n: p.env for n, p in shipped_presets().items()})


def preset_name_for(env_id: str) -> str | None:
    """'Hopper-v5' or 'gymnasium.envs:Hopper-v5' -> 'Hopper', 'MinAtar/Breakout-v1' -> 'MinAtar'; a preset for
    one version ('Ant-v5') before the env's own ('Ant'); None when no preset matches."""
    if env_id.rsplit(":", 1)[-1].startswith("MinAtar/"):
        return "MinAtar"
    versioned = env_id.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    if versioned in PRESETS:
        return versioned
    base = re.sub(r"-v\d+$", "", versioned)
    return base if base in PRESETS else None


def is_vector_observation(space: Any) -> bool:
    """Whether an observation space is a flat vector of floats (a 1-D float Box): what VECTOR_PRESET is for."""
    shape, dtype = getattr(space, "shape", None), getattr(space, "dtype", None)
    return (type(space).__name__ == "Box" and shape is not None and len(shape) == 1 and dtype is not None
            and dtype.kind == "f")


def resolve_config(
    env_id: str | None,
    preset: str | None = "auto",
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    observation_space: Any = None,
) -> tuple[TRPOConfig, str | None]:
    """Defaults < preset < file < overrides (env_kwargs merged key by key). Returns the config and the preset name
    used (or None). With 'auto', an env no preset names takes VECTOR_PRESET when its `observation_space` (given)
    is a flat vector."""
    name: str | None
    if preset in (None, "none", ""):
        name = None
    elif preset == "auto":
        name = preset_name_for(env_id) if env_id else None
        if name is None and observation_space is not None and is_vector_observation(observation_space):
            name = VECTOR_PRESET
    else:  # a preset's name, or an env id whose preset to take ('CartPole-v1' for a partially observed CartPole)
        name = preset if preset in PRESETS else preset_name_for(preset)
        if name is None:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}, auto, none, or an env "
                              "id one of them is for")
    values: dict[str, Any] = dict(PRESETS[name]) if name else {}
    for layer in (coerce_fields(file_values or {}), coerce_fields(overrides or {})):
        # env_kwargs add to the preset's key by key: --env-kwargs '{"ctrl_cost_weight": 0.1}' on Ant-v5 keeps
        # the preset's include_cfrc_ext_in_observation (give that key to change it).
        if layer.get("env_kwargs") is not None and values.get("env_kwargs") is not None:
            layer["env_kwargs"] = {**values["env_kwargs"], **layer["env_kwargs"]}
        values.update(layer)
    return TRPOConfig(**values), name


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping; a clear ConfigError for a missing file or bad content."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


__all__ = [
    "PRESETS",
    "PRESET_ENVS",
    "PRESET_STEPS",
    "VECTOR_PRESET",
    "is_vector_observation",
    "load_presets",
    "load_yaml",
    "preset_name_for",
    "resolve_config",
    "shipped_presets",
]
