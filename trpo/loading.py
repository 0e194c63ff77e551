"""Agents from disk: `load` (a checkpoint file into an agent for its env, or for another env with the same spaces)
and `resume` (a run directory's newest state, or its record when it was stopped before one), with the checks that
keep a stored run from running what no one named (trust.py) and from mixing two runs.

The agent class comes in as an argument (`Restorable`), so this module never imports the agent back; the files
are read through checkpoint.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol, TypeVar

import gymnasium as gym

from trpo import checkpoint
from trpo import trust as trust_lib
from trpo.coerce import check_seed
from trpo.config import RESUME_SAFE_FIELDS, RUN_RECORD_KEYS, TRPOConfig, available_cores
from trpo.envs import EnvSpec, env_id_of, make_env, with_options
from trpo.errors import ConfigError
from trpo.rundir import RunDir


class Restorable(Protocol):
    """What loading needs of an agent class: built like TRPO, filled from a checkpoint's state dict."""

    run_id: str | None
    preset: str | None
    runs: RunDir

    def __init__(self, env: EnvSpec, config: TRPOConfig | None = ..., seed: int = ..., run_dir: Any = ...,
                 progress: bool = ..., overwrite: bool = ...) -> None: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...

    @property
    def total_steps(self) -> int: ...

    @total_steps.setter
    def total_steps(self, value: int) -> None: ...


A = TypeVar("A", bound=Restorable)


def load(cls: type[A], file: Path, env: EnvSpec | None, env_named: bool, device: str | None,
         run_dir: str | Path | None, progress: bool, overrides: dict[str, Any] | None, trust: bool) -> A:
    """TRPO.load of a checkpoint file; `env_named`: whether `env` is the user's (else a run record's, whose id is
    checked as the checkpoint's own would be)."""
    state = checkpoint.load(file)
    try:
        saved = dict(state["config"])
        # torch_threads is the machine's business: a run saved on a bigger one gets this one's cores at most.
        if isinstance(saved.get("torch_threads"), int):
            saved["torch_threads"] = min(saved["torch_threads"], available_cores())
        config = TRPOConfig.from_dict(saved)
        env_id, seed = state["env_id"], state["seed"]
    except (KeyError, TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{file} holds no valid trpo config ({_describe(exc)})") from exc
    changes = {**(overrides or {}), **({} if device is None else {"device": device})}
    if changes:
        config = TRPOConfig.from_dict({**config.to_dict(), **changes})
    spec = env if env is not None else env_id
    if spec is None:
        raise checkpoint.CheckpointError(f"{file} was trained on an env without an id; pass env=...")
    refuse_unnamed(file, spec, env_named, config, changes, trust, checkpoint.CheckpointError)
    try:
        agent = cls(spec, config=config, seed=seed, run_dir=run_dir, progress=progress)
    except ConfigError as exc:  # e.g. use_sde, which another env's actions refuse: the spaces differ, said so
        other = _other_spaces(file, state, spec, config)
        if other is None:
            raise
        raise other from exc
    try:
        agent.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        agent.close()
        trained_on = f", trained on {env_id!r}" if env_id != env_id_of(spec) else ""
        raise _other_spaces(file, state, spec, config) or checkpoint.CheckpointError(
            f"{file} does not fit env {spec!r}{trained_on} (or this trpo version): {_describe(exc)}") from exc
    agent.runs.loaded_from = file
    return agent


def resume(cls: type[A], run_dir: Path, progress: bool, env: EnvSpec | None, overrides: dict[str, Any],
           trust: bool) -> A:
    """TRPO.resume: the checks on what may change, the run directory locked before anything is read, the
    agent (`resumed`), and a best.pt its latest.pt carried written at once."""
    fixed = sorted(set(overrides) - set(RESUME_SAFE_FIELDS))
    if fixed:
        raise ConfigError(f"a resumed run keeps its own config: {', '.join(fixed)} cannot change (these may: "
                          f"{', '.join(RESUME_SAFE_FIELDS)})")
    if not run_dir.is_dir():
        raise checkpoint.RunDirError(f"cannot resume: {run_dir} is not a run directory")
    lock = checkpoint.RunDirLock(run_dir)  # before reading: the run may not change under us
    try:
        agent = resumed(cls, run_dir, progress, env, overrides, trust)
    except BaseException:
        lock.release()
        raise
    agent.runs.lock = lock
    checkpoint.remove_temp_files(run_dir)
    agent.runs.write_best()  # one its latest.pt carried (a process that ended before writing it): due at once
    return agent


def resumed(cls: type[A], run_dir: Path, progress: bool, env: EnvSpec | None, overrides: dict[str, Any],
            trust: bool) -> A:
    """TRPO.resume's agent, its run directory locked by the caller: from the run's newest saved state, or from
    the start with its recorded config, env and seed."""
    record = checkpoint.read_run_record(run_dir)
    recorded_env = record.get("env")
    if recorded_env is not None and not isinstance(recorded_env, str):
        raise checkpoint.RunDirError(f"{run_dir / 'config.yaml'}: env must be an env id, got {recorded_env!r}")
    if env is not None and recorded_env is not None and env_id_of(env) != recorded_env:
        raise ConfigError(f"the run in {run_dir} trains on {recorded_env!r} and keeps it: drop --env (API: env=), "
                          "which is only for a run trained on an env without an id")
    if env is None and not recorded_env:
        raise ConfigError(f"cannot resume {run_dir}: it was trained on an env without an id (a factory or an "
                          "instance); pass that env again (CLI: --env ID, API: TRPO.resume(run_dir, env=...))")
    mode = overrides.get("vector_mode")
    if mode is not None and (mode == "envpool") != (record.get("vector_mode") == "envpool"):
        raise ConfigError(f"the run in {run_dir} cannot switch to or from vector_mode 'envpool' on resume: "
                          "envpool's envs are its own implementations, not Gymnasium's")
    spec = env if env is not None else recorded_env
    assert spec is not None  # one of the two, checked above
    total = record.get("total_steps")
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise checkpoint.RunDirError(f"{run_dir / 'config.yaml'}: total_steps must be a positive integer, "
                                     f"got {total!r}")
    saved = checkpoint.newest(run_dir)
    if saved is not None:
        agent = load(cls, saved, spec, env is not None, None, run_dir, progress, overrides, trust)
        recorded_id = record.get("run_id")
        if agent.run_id is not None and recorded_id is not None and agent.run_id != recorded_id:
            agent.close()  # another run's checkpoint (copied in): going on would mix two runs' rows
            raise checkpoint.RunDirError(f"cannot resume {run_dir}: its checkpoint {saved} is of another run "
                                         f"(run_id {agent.run_id}) than its config.yaml (run_id {recorded_id})")
    else:
        values = {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS}
        try:
            config = TRPOConfig.from_dict({**values, **overrides})
            seed = check_seed(record.get("seed", 0))
        except ConfigError as exc:
            raise checkpoint.RunDirError(f"{run_dir / 'config.yaml'}: {exc}") from None
        refuse_unnamed(run_dir / "config.yaml", spec, env is not None, config, overrides, trust,
                       checkpoint.RunDirError)
        agent = cls(spec, config=config, seed=seed, run_dir=run_dir, progress=progress, overwrite=True)
        preset = record.get("preset")
        agent.preset = preset if isinstance(preset, str) else None
    agent.total_steps = total
    return agent


def refuse_unnamed(source: Path, env: EnvSpec, env_named: bool, config: TRPOConfig, named: Any, trust: bool,
                   error: type[ValueError]) -> None:
    """Refuse to open a stored run (`source`) whose env would import, or whose training would join, what no one
    named (trust.py); `env_named`: whether the user gave `env` (else it is stored); `named`: the fields they gave."""
    env_id = env if isinstance(env, str) else None
    found = [] if trust else trust_lib.unnamed(None if env_named else env_id, config, named,
                                                 env_id if env_named else None)
    if found:
        raise error(trust_lib.refusal(source, found))


def spaces_text(observation_space: gym.Space, action_space: gym.Space) -> dict[str, str]:
    """An agent's spaces as a checkpoint records them."""
    return {"observation": repr(observation_space), "action": repr(action_space)}


def _other_spaces(file: Path, state: dict[str, Any], spec: EnvSpec,
                  config: TRPOConfig) -> checkpoint.CheckpointError | None:
    """The error naming both spaces where a checkpoint is loaded into an env with other spaces (a checkpoint from
    before they were recorded names its env instead); None where they are the same, or the env cannot be made."""
    try:
        env = make_env(with_options(spec, config.env_kwargs, config.max_episode_steps, config.env_wrappers))
    except Exception:  # the env's own error comes as it is, from the constructor
        return None
    here = spaces_text(env.observation_space, env.action_space)
    if env is not spec:  # never the user's own instance
        with contextlib.suppress(Exception):
            env.close()
    saved, name = state.get("spaces"), env_id_of(spec) or type(spec).__name__
    if isinstance(saved, dict):
        if saved == here:
            return None
        theirs = f"observations {saved.get('observation')}, actions {saved.get('action')}"
    elif state.get("env_id") not in (None, env_id_of(spec)):
        theirs = f"those of {state.get('env_id')!r} (this checkpoint is older than the record of them)"
    else:
        return None
    return checkpoint.CheckpointError(f"{file} does not fit env {name!r}: their spaces differ. The checkpoint's: "
                                      f"{theirs}; the env's: observations {here['observation']}, actions "
                                      f"{here['action']}")


def _describe(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
