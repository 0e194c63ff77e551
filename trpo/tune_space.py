"""What one `trpo tune` search is: its search space, parsed and checked, and its settings (TuneSettings).

Owns: DEFAULT_SPACE and RUN_FIELDS, a space's YAML form read into Dimensions (`parse_space`: every value checked
against its config field), TuneSettings and `settings_for`, which checks them all before a study opens or a trial
runs. Pure checks over trpo.config, gymnasium only in settings_for (the env's preset).
Must not touch: Optuna and the study's storage (trpo/tune_study.py), training and reporting trials (trpo/tune.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from trpo.config import TRPOConfig, coerce_fields
from trpo.errors import ConfigError
from trpo.resolve import PRESET_STEPS, load_yaml, resolve_config

# The default search space: TRPO's trust region and its CG, the advantage estimator, the batch's shape, the critic's
# fit, the networks' width and the normalizations. A list is a choice among values; a mapping {low, high, log} a
# range (integer for an integer field). `--space FILE.yaml` replaces it (same format).
DEFAULT_SPACE: dict[str, Any] = {
    "max_kl": {"low": 0.001, "high": 0.1, "log": True},
    "cg_damping": {"low": 0.001, "high": 0.5, "log": True},
    "gamma": [0.9, 0.95, 0.98, 0.99, 0.995, 0.999],
    "gae_lambda": [0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0],
    "num_envs": [1, 2, 4, 8],
    "steps_per_env": [128, 256, 512, 1024, 2048],
    "value_lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "value_epochs": [5, 10, 20, 30],
    "actor_hidden": ["64,64", "128,128", "256,256"],
    "critic_hidden": ["64,64", "128,128", "256,256"],
    "normalize_obs": [True, False],
    "normalize_reward": [True, False],
}
# Not tuned (they say how trials run, not what they learn), and not in best.yaml.
RUN_FIELDS = ("vector_mode", "num_workers", "device", "torch_threads", "eval_every", "checkpoint_every")


@dataclass(frozen=True)
class Dimension:
    """One field of the space: a choice among `choices`, or a range [low, high] (log-scaled if `log`)."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return " | ".join(map(str, self.choices))
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (" int" if self.integer else "")


def parse_space(space: Any, where: str = "space") -> list[Dimension]:
    """The search space from its YAML form, every value checked against its config field; ConfigError if not."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where} must be a non-empty mapping of config field: choices or {{low, high, log}}")
    fields = TRPOConfig.__dataclass_fields__
    dims = []
    for name, spec in space.items():
        if not isinstance(name, str) or name not in fields:
            raise ConfigError(f"{where}: unknown config field {name!r}")
        if name in RUN_FIELDS:
            raise ConfigError(f"{where}: {name} says how trials run, not what they learn; set it with --set")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: {name} has no choices")
            for value in spec:
                if not isinstance(value, str | int | float | bool):  # what Optuna stores; tuples as "64,64"
                    raise ConfigError(f"{where}: {name}: choices are numbers, booleans or text, got {value!r}")
                coerce_fields({name: value})
            if len(set(map(repr, spec))) != len(spec):
                raise ConfigError(f"{where}: {name} repeats a choice")
            dims.append(Dimension(name, choices=tuple(spec)))
        elif isinstance(spec, Mapping):
            dims.append(_range(name, dict(spec), where))
        else:
            raise ConfigError(f"{where}: {name} must be a list of choices or {{low, high, log}}, got {spec!r}")
    return dims


def _range(name: str, spec: dict[str, Any], where: str) -> Dimension:
    unknown = set(spec) - {"low", "high", "log"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {name} takes low, high and optionally log, got {sorted(spec)}")
    kind = _number_kind(name)
    if kind is None:
        raise ConfigError(f"{where}: {name} is not a number: give a list of choices")
    integer = kind is int
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for label, value in (("low", low), ("high", high)):
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            raise ConfigError(f"{where}: {name}.{label} must be a finite {'integer' if integer else 'number'}, "
                              f"got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {name}.log must be true or false, got {log!r}")
    if not low < high or (log and low <= 0):
        raise ConfigError(f"{where}: {name} needs low < high{' and low > 0 (log)' if log else ''}, got {low}, {high}")
    return Dimension(name, low=float(low), high=float(high), log=log, integer=integer)


@dataclass
class TuneSettings:
    """What one search is: the env, the budget per trial, the space and the fixed fields, where it is stored."""

    env: str
    total_steps: int
    trials: int
    space: list[Dimension]
    fixed: dict[str, Any]
    study: str
    storage: str
    out: Path
    seed: int = 0
    evaluations: int = 10
    startup_trials: int = 5
    pruner: str = "median"
    sampler: str = "tpe"
    preset: str = "none"  # the env's preset, as `trpo train` would choose it ('none': the field defaults)

    @property
    def study_dir(self) -> Path:
        return self.out / self.study


def settings_for(env: str, trials: int, *, total_steps: int | None = None, space_file: str | None = None,
                 sets: Mapping[str, str] | None = None, study: str | None = None, storage: str | None = None,
                 out: Path = Path("runs/tune"), seed: int = 0, evaluations: int = 10, startup_trials: int = 5,
                 pruner: str = "median", sampler: str = "tpe") -> TuneSettings:
    """Checked settings (ConfigError for anything wrong, before a trial runs)."""
    space = parse_space(load_yaml(space_file) if space_file else DEFAULT_SPACE, space_file or "space")
    fixed = coerce_fields(dict(sets or {}))
    overlap = sorted(set(fixed) & {d.name for d in space})
    if overlap:
        raise ConfigError(f"--set fixes {', '.join(overlap)}, which the space tunes: drop one")
    from trpo.envs import resolve_env_config  # gymnasium: only where a study is set up

    config, preset = resolve_env_config(env, env, "auto", overrides=fixed)  # the fixed fields are valid on the preset
    for dim in space:  # and so is each value of the space, alone (a combination may still fail its trial)
        for value in dim.choices or (dim.low, dim.high):
            try:
                resolve_config(env, preset or "none",
                               overrides={**fixed, dim.name: int(value) if dim.integer else value})
            except ConfigError as exc:
                raise ConfigError(f"{space_file or 'space'}: {dim.name}: {value!r} is refused: {exc}") from None
    steps = total_steps or PRESET_STEPS.get(preset or "", 1_000_000)
    for name, value in (("trials", trials), ("evaluations", evaluations), ("startup_trials", startup_trials)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if steps < evaluations:
        raise ConfigError(f"total_steps ({steps}) must be at least the number of evaluations ({evaluations})")
    if pruner not in ("median", "none") or sampler not in ("tpe", "random"):
        raise ConfigError(f"pruner is median or none, sampler tpe or random; got {pruner!r}, {sampler!r}")
    if not config.eval_episodes:
        raise ConfigError("a trial's value is its final evaluation: eval_episodes must be > 0")
    name = study or env.replace(":", "_").replace("/", "_")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"study must be a plain name, got {name!r}")
    url = storage or f"sqlite:///{(out / f'{name}.db').as_posix()}"
    if url.split("?")[0] in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        # SQLAlchemy's in-memory database: gone at exit, and not even shared with the trial's own threads
        raise ConfigError(f"--storage {url} names no database file: give sqlite:///PATH.db (or a server's URL)")
    return TuneSettings(env, steps, trials, space, fixed, name, url, out, seed, evaluations, startup_trials, pruner,
                        sampler, preset or "none")


def _number_kind(name: str) -> type | None:
    """int or float for a numeric field (optional ones too), None for the others."""
    hint = get_type_hints(TRPOConfig)[name]
    for kind in (int, float):
        if hint in (kind, kind | None):
            return kind
    return None
