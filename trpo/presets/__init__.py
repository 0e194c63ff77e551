"""The shipped presets as data: one YAML file per family of envs in this folder (rl-zoo's hyperparameter files).

A file maps each preset's name to what a `trpo train --config` file holds: `env`, the env id the preset was tuned
on and is tested with; `total_steps`, the training budget that goes with it; then TRPOConfig fields, with comments
saying where each value came from. This module owns the files and their shape and nothing else: it never imports
trpo.config or trpo.resolve (which imports it); resolve.load_presets hands it the check of the fields.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:  # Python 3.10 has it in importlib.abc only
        from importlib.abc import Traversable

# The families in the order `trpo presets` and the reference list them (simple tasks first); any other file follows
# them by name.
FAMILIES = ("classic", "mujoco", "box2d", "pomdp", "vector", "atari")
RECORD_KEYS = ("env", "total_steps")  # a preset's keys that are not config fields


class PresetError(ValueError):
    """A preset file is malformed; the message names the file and the preset."""


@dataclass(frozen=True)
class Preset:
    name: str
    env: str
    total_steps: int
    fields: dict[str, Any]
    """TRPOConfig fields as the file holds them (plain YAML values)."""
    source: str
    """The file it is defined in."""


def read_presets(directory: str | os.PathLike[str] | None = None,
                 check: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Preset]:
    """Every preset of the YAML files in `directory` (default: this package's), by name, in file order (FAMILIES)
    and then as written. `check(fields)` raises ValueError for fields that make no valid config. The first problem
    raises PresetError naming the file and the preset."""
    folder = resources.files(__name__) if directory is None else Path(directory)
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=_family_order)
    presets: dict[str, Preset] = {}
    for file in files:
        for preset in _read_file(file, check):
            if preset.name in presets:
                raise PresetError(f"{file}: preset {preset.name!r} is also in {presets[preset.name].source}")
            presets[preset.name] = preset
    return presets


def _family_order(file: Traversable) -> tuple[int, str]:
    stem = file.name.removesuffix(".yaml")
    return (FAMILIES.index(stem) if stem in FAMILIES else len(FAMILIES), file.name)


def _read_file(file: Traversable, check: Callable[[dict[str, Any]], object] | None) -> Iterator[Preset]:
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PresetError(f"{file}: not a valid YAML file: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{file}: must map preset names to their settings")
    for name, values in data.items():
        where = f"{file}: preset {name!r}"
        if not isinstance(name, str) or not isinstance(values, dict):
            raise PresetError(f"{where}: must be a name mapped to env, total_steps and config fields")
        env, steps = values.get("env"), values.get("total_steps")
        if not isinstance(env, str) or not env.strip():
            raise PresetError(f"{where}: env must be the env id the preset is for, got {env!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise PresetError(f"{where}: total_steps must be a positive integer, got {steps!r}")
        fields = {key: value for key, value in values.items() if key not in RECORD_KEYS}
        if check is not None:
            try:
                check(fields)
            except ValueError as exc:
                raise PresetError(f"{where}: {exc}") from None
        yield Preset(name, env, steps, fields, str(file))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping, which PyYAML would let the last one win silently."""


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)

K = TypeVar("K")
V = TypeVar("V")


class LazyMapping(Mapping[K, V]):
    """A read-only mapping built on its first use: importing trpo.resolve reads no preset file."""

    def __init__(self, build: Callable[[], Mapping[K, V]]) -> None:
        self._build = build

    @functools.cached_property
    def _data(self) -> Mapping[K, V]:
        return self._build()

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)


__all__ = ["FAMILIES", "RECORD_KEYS", "LazyMapping", "Preset", "PresetError", "read_presets"]
