"""class TRPO, the facade users hold: it composes the parts and owns no algorithm or file layout of its own.

    learner.py    pi_theta, V_phi and one update (collect -> advantages -> policy step -> fit V -> metrics)
    rundir.py     the run directory: claim and lock, config.yaml and logs, latest/best/numbered/final checkpoints
    evaluation.py evaluation episodes; the periodic evaluations (their rows, the best so far) and their line
    predictor.py  predict: observations encoded, recurrent state and episode starts, actions from the acting policy
    loading.py    load and resume

`learn`/`train_until` run the loop: an update, its row logged, an evaluation and checkpoints when due, the
callback.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import gymnasium as gym
import numpy as np
import torch

from trpo import checkpoint, evaluation, loading
from trpo.coerce import check_seed
from trpo.config import TRPOConfig
from trpo.envs import EnvSpec, agent_config, close_env, env_id_of, make_env, with_options
from trpo.errors import ConfigError
from trpo.learner import Learner
from trpo.logger import Progress
from trpo.networks import Actor, Critic, check_device
from trpo.normalization import ObsNormalizer, RewardScaler
from trpo.optim import Adam
from trpo.predictor import Predictor
from trpo.rundir import BEST_PENDING, RunDir
from trpo.update_rules import UpdateRule

__all__ = ["BEST_PENDING", "TRPO", "Callback", "versions"]
Callback = Callable[["TRPO", dict[str, Any]], "bool | None"]
T = TypeVar("T")


def versions() -> dict[str, str]:
    from trpo import __version__

    return {"trpo": __version__, "torch": str(torch.__version__), "gymnasium": str(gym.__version__),
            "python": platform.python_version()}


class _Of(Generic[T]):
    """An attribute of one of the agent's parts, read and set through the agent (`agent.actor` is
    `agent.learner.actor`)."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self.part, self.name = part, name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, agent: Any, owner: type | None = None) -> T:
        if agent is None:  # on the class (documentation tools): the descriptor itself
            return self  # type: ignore[return-value]
        return getattr(getattr(agent, self.part), self.name)  # type: ignore[arg-type]

    def __set__(self, agent: Any, value: T) -> None:
        setattr(getattr(agent, self.part), self.name, value)  # type: ignore[arg-type]


class TRPO:
    """Trust Region Policy Optimization on a Gymnasium environment.

    env: an env id ('CartPole-v1', 'module:EnvId'), a zero-argument factory, or a `gymnasium.Env` instance (one env,
        stepped in this process: the preset's num_envs and vector_mode give way, with a warning saying so).
    config: the hyperparameters, exactly; when omitted, the env id's preset (if any) over the field defaults.
    **overrides: config fields set on top of that (`TRPO("Hopper-v5", max_kl=0.02)` is the Hopper preset with
        max_kl 0.02; with `config=`, that config with these fields replaced).
    run_dir: where learn() writes config.yaml, metrics.jsonl, TensorBoard events and checkpoints (optional).
    progress: show on stderr how training goes (a bar on a terminal, plain lines otherwise) and each periodic
        evaluation's result; off, the library prints nothing.
    overwrite: a run_dir that already holds a run is refused (use `TRPO.resume` to continue it); True removes
        that run's files first.
    """

    # The learner's parts, as the agent's attributes (they were until the learner had a module of its own).
    actor: _Of[Actor] = _Of("learner")
    critic: _Of[Critic] = _Of("learner")
    critic_optimizer: _Of[Adam] = _Of("learner")
    update_rule: _Of[UpdateRule] = _Of("learner")
    obs_norm: _Of[ObsNormalizer] = _Of("learner")
    reward_scaler: _Of[RewardScaler] = _Of("learner")
    sample_gen: _Of[torch.Generator] = _Of("learner")
    shuffle_gen: _Of[torch.Generator] = _Of("learner")
    num_steps: _Of[int] = _Of("learner")
    num_updates: _Of[int] = _Of("learner")
    total_steps: _Of[int] = _Of("learner")
    predict_gen: _Of[torch.Generator] = _Of("predictor", "gen")
    evaluations: _Of[list[dict[str, Any]]] = _Of("evals", "rows")
    best_mean_return: _Of[float] = _Of("evals", "best")

    def __init__(self, env: EnvSpec = "CartPole-v1", config: TRPOConfig | None = None, seed: int = 0,
                 run_dir: str | Path | None = None, progress: bool = False, overwrite: bool = False,
                 **overrides: Any) -> None:
        self.env_id = env_id_of(env)
        config, self.preset, probe = agent_config(env, config, overrides)
        cfg = self.config = config
        self.seed = check_seed(seed)
        self.runs = RunDir(run_dir, overwrite)
        self.run_id: str | None = None  # names the run in config.yaml and checkpoints; set when it first writes
        self.progress = progress
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        check_device(self.device)

        # The env options (env_kwargs, max_episode_steps, env_wrappers) go with the env wherever it is made.
        self.env_spec = with_options(env, cfg.env_kwargs, cfg.max_episode_steps, cfg.env_wrappers)
        if probe is not None and self.env_spec is not env:
            close_env(probe)
            probe = None
        self._eval_env = probe if probe is not None else make_env(self.env_spec)
        self.observation_space = self._eval_env.observation_space
        self.action_space = self._eval_env.action_space
        self.learner = Learner.for_env(cfg, self.env_spec, self._eval_env, self.seed, self.device)
        self.dist, self.encoder = self.learner.dist, self.learner.encoder
        self.predictor = Predictor(self.learner, self.device, self.seed + 2)
        self.history: list[dict[str, Any]] = []  # the metrics rows of this agent's updates
        self.evals = evaluation.Evaluations()  # periodic evaluations (eval_every), as in evaluations.jsonl

    @property
    def run_dir(self) -> Path | None:
        """Where learn() writes (None: nowhere); may be set until the agent first writes there."""
        return self.runs.given

    @run_dir.setter
    def run_dir(self, path: str | Path | None) -> None:
        self.runs.given = path

    # --- training ------------------------------------------------------------------------------------------

    def learn(self, total_timesteps: int | None = None, callback: Callback | None = None,
              reset_num_timesteps: bool = True) -> TRPO:
        """Train for `total_timesteps` env steps, as Stable-Baselines3's learn: each call trains that many more.
        With reset_num_timesteps (True, SB3's default) the step and update counters start again from 0 first,
        which an agent that has trained in a run directory refuses (its counters are the run's: pass False to go
        on, its run's total_steps growing by total_timesteps). Without a count, training continues to the run's
        total_steps: `TRPO.resume(run_dir).learn()`. `train_until` takes a total instead.

        callback(agent, metrics) runs after each update; returning False stops training early.
        """
        if total_timesteps is None:
            if self.total_steps <= 0:
                raise ConfigError("learn() without a count continues a run to its total_steps; this agent has none: "
                                  "pass total_timesteps")
            return self.train_until(self.total_steps, callback)
        steps = _positive("total_timesteps", total_timesteps)
        if reset_num_timesteps and self.num_steps > 0:
            if self.run_dir is not None:
                raise ConfigError(f"this agent has trained {self.num_steps} steps of the run in {self.run_dir}, whose "
                                  "counters cannot start again: learn(n, reset_num_timesteps=False) trains n more")
            self.num_steps = self.num_updates = 0
        return self.train_until(self.num_steps + steps, callback)

    def train_until(self, total_steps: int, callback: Callback | None = None) -> TRPO:
        """Train until `total_steps` env steps in all (a resumed or loaded agent goes on from its count; none if it
        is there already, but a run directory still gets its final checkpoint).

        callback(agent, metrics) runs after each update; returning False stops training early.
        """
        total_steps = _positive("total_steps", total_steps)
        cfg, runs = self.config, (self.runs if self.run_dir is not None else None)
        if cfg.eval_every and isinstance(self.env_spec, gym.Env):
            raise ConfigError("eval_every needs an env id or a factory: an env instance is the training env itself")
        self.total_steps = int(total_steps)
        claimed = runs is not None and runs.claim(self.run_id, self.num_updates)
        if self.num_steps < self.total_steps:
            try:
                self.learner.collector_or_new()  # envs, workers, Ray: a failure here leaves no run files behind
            except BaseException:
                if claimed and runs is not None:
                    runs.release(abandon=True)  # nor a lock file or a directory that this start made
                raise
        log = None
        if runs is not None:
            self.run_id = runs.run_id_for(self.run_id)
            log = runs.open(self._record(), self.num_steps, self.num_updates)
            out, kept = runs.open_evaluations(cfg.eval_every, self.num_updates)
            if out is not None or kept:
                self.evals = evaluation.Evaluations(kept, out)
        progress = Progress(self.total_steps, self.num_steps) if self.progress else None
        try:
            while self.num_steps < self.total_steps:
                before = self.num_steps
                metrics = self.learner.update()
                self.history.append(metrics)
                if log is not None:
                    log.write(metrics)
                if progress is not None:
                    progress.update(self.num_steps, metrics["episode_return_mean"])
                if _passed(before, self.num_steps, cfg.eval_every):
                    best = self.evals.add(self.evaluate(cfg.eval_episodes), self.num_updates, self.num_steps, log)
                    if best and runs is not None:  # for best.pt at the next checkpoint
                        runs.best_snapshot = checkpoint.serialize(self.state_dict())
                    if progress is not None:
                        progress.note(evaluation.evaluation_line(self.evaluations[-1], best))
                if runs is not None and _passed(before, self.num_steps, cfg.save_every):
                    runs.save_numbered(self.state_dict(), self.num_steps, cfg.keep_checkpoints)
                if runs is not None and cfg.checkpoint_every and self.num_updates % cfg.checkpoint_every == 0:
                    runs.save_latest(self.state_dict())
                if callback is not None and callback(self, metrics) is False:
                    break
        finally:
            if progress is not None:
                progress.close()
            self.evals.close()
            if log is not None:
                log.close()
        if runs is not None:
            runs.save_latest(self.state_dict())
            if self.num_steps >= self.total_steps:
                self.save(runs.path / checkpoint.FINAL)
        return self

    def _record(self) -> dict[str, Any]:
        """config.yaml: who the run is, then its config."""
        return {"env": self.env_id, "seed": self.seed, "total_steps": self.total_steps, "preset": self.preset,
                "run_id": self.run_id, **self.config.to_dict(), "versions": versions()}

    # --- acting --------------------------------------------------------------------------------------------

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True,
                action_mask: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(action, next state) for one observation, or (actions, next states) for a batch (leading dim), the
        actions as the env takes them: SB3's convention, `action, state = agent.predict(obs)`.

        A recurrent policy (config.recurrent) carries a state [B, state_dim] from call to call: pass the state the
        last call returned (None: the zero state) and `episode_start` (bool, one per observation), True where the
        observation is an episode's first (its state is reset). A feed-forward policy returns None as the state.
        An env that masks its actions through info["action_mask"] needs that mask here (a Dict observation carries
        its own)."""
        return self.predictor.predict(obs, state, episode_start, deterministic, action_mask)

    def evaluate(self, episodes: int = 10, deterministic: bool = True, seed: int | None = None,
                 video: str | Path | None = None, render: bool = False, progress: bool = False) -> dict[str, Any]:
        """Run full episodes on a separate env; returns mean/std of the raw returns and the per-episode lists.
        In an env without a time limit of its own, an episode ends after config.eval_max_steps steps (a policy
        can walk into a wall forever): `capped` counts the episodes cut there. `video`: also write the episodes'
        frames to this file (mp4, gif, ...; pip install 'trpo[video]'); `render`: show them in a window. Both run
        on an env made to render (render.py), the same episodes as without. `progress`: show on stderr how far the
        episodes are (frames written with a video, env steps otherwise) once they take more than a moment
        (evaluation.py)."""
        episodes = evaluation.check_episodes(episodes)
        if self._eval_env is self.env_spec:
            self.learner.collector = None  # the shared instance is about to be reset; start training afresh after
        first_seed = (self.seed + 1_000_003) % 2**32 if seed is None else seed
        return evaluation.evaluate(self._eval_env, self.env_spec, self.predictor.episode_act(deterministic),
                                   self.predictor.state_in(None, 1), episodes, first_seed,
                                   self.config.eval_max_steps, video, render, progress)

    # --- persistence ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        learned = self.learner.state_dict()
        rng = {**learned.pop("rng"), "predict": self.predictor.gen.get_state()}
        return {"config": self.config.to_dict(), "env_id": self.env_id, "run_id": self.run_id, "preset": self.preset,
                "seed": self.seed, **learned, "rng": rng, "versions": versions(),
                "spaces": loading.spaces_text(self.observation_space, self.action_space)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (the config and env are the constructor's business)."""
        self.preset = state.get("preset")
        self.run_id = state.get("run_id")  # None in checkpoints from before run ids
        self.learner.load_state_dict(state)
        if state["rng"]["predict"].numel() == self.predictor.gen.get_state().numel():
            self.predictor.gen.set_state(state["rng"]["predict"])  # else saved on another device type: reseeded
        self.runs.carried_best(state, self.run_id)

    def save(self, path: str | Path) -> None:
        """Atomically write everything needed to predict and to resume training."""
        checkpoint.save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, env: EnvSpec | None = None, device: str | None = None,
             run_dir: str | Path | None = None, progress: bool = False,
             overrides: dict[str, Any] | None = None, trust: bool = False) -> TRPO:
        """Rebuild an agent from a checkpoint file or run directory. `env` defaults to the saved env id;
        `overrides` replaces config fields (the CLI allows only those that leave the math unchanged).
        With `run_dir`, training (`train_until(total)`, `learn(n, reset_num_timesteps=False)`) continues the
        checkpoint's own run there, or starts a new run from the checkpoint in a directory without a run; another
        run's directory is refused. A damaged checkpoint (checksum, non-finite weights or statistics) is refused.
        `trust`: allow what the checkpoint names and this call does not, which is refused otherwise with one line
        naming it: the modules its env id and env_wrappers would import (other than trpo's, Gymnasium's and those
        already imported), the Ray cluster its ray_address joins (docs/security.md)."""
        return loading.load(cls, checkpoint.resolve(path), env, env is not None, device, run_dir, progress, overrides,
                            trust)

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = False, env: EnvSpec | None = None, trust: bool = False,
               **overrides: Any) -> TRPO:
        """The run in `run_dir`, ready to continue with `learn()` (to its total_steps): from its newest saved state
        (checkpoints/latest.pt, else final.pt), or, if it was stopped before writing one, from the start with its
        saved config, env and seed (its earlier rows and events are removed). `env` is needed only for a run
        trained on an env without an id (a factory or an instance); a run with an id keeps it. `overrides` may
        change only fields that leave the run's math unchanged (RESUME_SAFE_FIELDS). The run directory is locked
        for this agent at once: a run that is still being written is refused. `trust` as for `load`: the run's
        env id counts as named when `env` gives it again."""
        return loading.resume(cls, Path(run_dir), progress, env, overrides, trust)

    @property
    def finished(self) -> bool:
        """Whether run_dir holds everything a run writes at its end: final.pt and (with eval_episodes) an
        eval.json of the final step. A run killed between its last checkpoint and these is not finished."""
        return (self.run_dir is not None and self.num_steps >= self.total_steps
                and self.runs.finished(self.num_steps, self.config.eval_episodes))

    def close(self) -> None:
        """Stop the env workers, close the envs and let go of the run directory."""
        try:
            self.learner.close()
            close_env(self._eval_env)
        finally:
            self.runs.release()  # last: the workers forked from this process are gone by now


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _passed(before: int, now: int, every: int) -> bool:
    """Whether the env step count passed a multiple of `every` (0: never) going from `before` to `now`."""
    return every > 0 and now // every > before // every
