"""class TRPO: composes rollouts, advantages, the policy update rule and the value fit into `learn`, and offers
`predict`, `evaluate`, `save`, `load` and `resume`.

One update (`_update`) reads like the paper's algorithm box:
    collect a batch with pi_old -> advantages -> policy step (the update rule: trpo's CG + line search, or
    another member of the family, update_rules.py) -> fit V -> log.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from torch import Tensor

from trpo import advantages as adv_lib
from trpo import checkpoint, evaluation
from trpo import policy as policy_lib
from trpo import trust as trust_lib
from trpo import vine as vine_lib
from trpo.config import (
    RESUME_SAFE_FIELDS,
    RUN_RECORD_KEYS,
    ConfigError,
    TRPOConfig,
    available_cores,
    check_seed,
)
from trpo.distributions import make_distribution
from trpo.envs import (
    EnvError,
    EnvSpec,
    close_env,
    env_failure,
    env_id_of,
    make_env,
    resolve_env_config,
    with_options,
)
from trpo.logger import MetricsLog, Progress
from trpo.networks import Actor, Critic, check_device
from trpo.normalization import ObsNormalizer, RewardScaler
from trpo.observations import MASK_KEY, ObsEncoder, ObservationError, UnsupportedSpaceError, mask_source
from trpo.optim import Adam
from trpo.rollout import Batch, RolloutCollector
from trpo.sequences import Inputs, Sequences, select, unit_steps, units
from trpo.update_rules import PolicyBatch, make_update_rule, policy_stats

Callback = Callable[["TRPO", dict[str, Any]], "bool | None"]
# latest.pt's copy of a best.pt not yet written (`TRPO._save_latest`), as bytes in a uint8 tensor.
BEST_PENDING = "best_pending"


def versions() -> dict[str, str]:
    from trpo import __version__

    return {"trpo": __version__, "torch": str(torch.__version__), "gymnasium": str(gym.__version__),
            "python": platform.python_version()}


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

    def __init__(
        self,
        env: EnvSpec = "CartPole-v1",
        config: TRPOConfig | None = None,
        seed: int = 0,
        run_dir: str | Path | None = None,
        progress: bool = False,
        overwrite: bool = False,
        **overrides: Any,
    ) -> None:
        self.env_id = env_id_of(env)
        probe = None  # a factory's env, made to read its registered id
        if config is None:
            preset_id = self.env_id
            if preset_id is None and callable(env) and not isinstance(env, gym.Env):
                probe = make_env(env)  # a factory whose env has a registered id keeps that id's preset
                preset_id = probe.spec.id if probe.spec is not None else None
            config, self.preset = resolve_env_config(env, preset_id, "auto", overrides=overrides, made=probe)
            if isinstance(env, gym.Env):
                config = _one_env_in_process(config, set(overrides))
        else:
            self.preset = None
            if overrides:
                config = TRPOConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.seed = check_seed(seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.overwrite = overwrite
        self.run_id: str | None = None  # names the run in config.yaml and checkpoints; set when it first writes
        self._loaded_from: Path | None = None  # the checkpoint file this agent was loaded from
        self._lock: checkpoint.RunDirLock | None = None  # held from the first write to run_dir until close()
        self.progress = progress
        cfg = self.config
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
        try:
            self.dist = make_distribution(self.action_space, cfg.use_sde)
        except ValueError as exc:
            if isinstance(exc, UnsupportedSpaceError):
                raise
            raise ConfigError(str(exc)) from exc  # use_sde for actions that are no Box
        try:
            self.encoder = ObsEncoder(self.observation_space, self._mask_source(), self.dist.mask_groups,
                                      cfg.obs_encoder)
        except ValueError as exc:
            if isinstance(exc, UnsupportedSpaceError):
                raise
            raise ConfigError(str(exc)) from exc  # e.g. obs_encoder 'cnn' for observations that are no images
        self._check_vine()

        torch.manual_seed(self.seed)  # network initialization
        image = self.encoder.image
        try:
            self.actor = Actor(self.encoder.dim, self.dist, cfg.actor_hidden, cfg.activation, cfg.init_log_std,
                               self.encoder.mask_dim, image, cfg.image_encoder, cfg.recurrent, cfg.recurrent_hidden)
            self.critic = Critic(self.encoder.dim, cfg.critic_hidden, cfg.activation, image, cfg.image_encoder,
                                 cfg.recurrent, cfg.recurrent_hidden)
        except ValueError as exc:  # e.g. images too small for the chosen CNN
            raise ConfigError(str(exc)) from exc
        self.actor.to(self.device)
        self.critic.to(self.device)
        # Fused Adam (all critic tensors in one kernel call: ~1.5x faster value fitting on the CPU), not from
        # torch.optim, whose import costs ~70 MiB (trpo/optim.py).
        self.critic_optimizer = Adam(self.critic.parameters(), lr=cfg.value_lr, eps=cfg.value_eps)

        # Pixels are scaled to [0, 1] in the CNN; per-pixel statistics would only add noise.
        self.obs_norm = ObsNormalizer(self.encoder.dim, cfg.normalize_obs and image is None, cfg.clip_obs,
                                      self.encoder.mask_dim)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma, cfg.normalize_reward, cfg.clip_reward)
        self.sample_gen = torch.Generator(device="cpu").manual_seed(self.seed)  # rollouts sample on the CPU
        self.shuffle_gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        self.predict_gen = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        self.update_rule = make_update_rule(cfg, self.dist, self.actor, self.shuffle_gen)
        self.num_steps = 0
        self.num_updates = 0
        self.total_steps = 0
        self.history: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []  # periodic evaluations (eval_every), as in evaluations.jsonl
        self.best_mean_return = -math.inf
        self._best_snapshot: bytes | None = None  # the best agent so far, for best.pt at the next checkpoint
        self._best_pending_run: str | None = None  # the run whose checkpoint carried _best_snapshot, when loaded
        self._collector: RolloutCollector | None = None
        self._critic_state: Tensor | None = None  # a recurrent critic's state per env where the last batch ended

    def _mask_source(self) -> str | None:
        """Action masks from a Dict observation's "action_mask" or from info["action_mask"] (Gymnasium's
        conventions; see observations.mask_source): the env is reset once here to look at its info."""
        info = None
        if not (isinstance(self.observation_space, gym.spaces.Dict) and MASK_KEY in self.observation_space.spaces):
            try:
                info = self._eval_env.reset(seed=self.seed)[1]
            except Exception as exc:
                raise env_failure(exc, "reset()", env=self._eval_env) from exc
        return mask_source(self.observation_space, self.dist, info)

    def _check_vine(self) -> None:
        """sampling 'vine' needs an env whose state can be saved and restored."""
        if self.config.sampling != "vine":
            return
        try:
            vine_lib.check_env(self._eval_env)
        except vine_lib.UnsupportedEnvStateError as exc:
            raise ConfigError(str(exc)) from exc

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
        cfg = self.config
        if cfg.eval_every and isinstance(self.env_spec, gym.Env):
            raise ConfigError("eval_every needs an env id or a factory: an env instance is the training env itself")
        self.total_steps = int(total_steps)
        first_claim = self.run_dir is not None and self._lock is None
        self._claim_run_dir()
        if self.num_steps < self.total_steps:
            try:
                self._collector_or_new()  # envs, workers, Ray: a failure here leaves no run files behind
            except BaseException:
                if first_claim and self._lock is not None:
                    self._lock.abandon()  # nor a lock file or a directory that this start made
                    self._lock = None
                raise
        log = self._open_run_dir()
        evaluations = self._open_evaluations()
        progress = Progress(self.total_steps, self.num_steps) if self.progress else None
        try:
            while self.num_steps < self.total_steps:
                before = self.num_steps
                metrics = self._update()
                self.history.append(metrics)
                if log is not None:
                    log.write(metrics)
                if progress is not None:
                    progress.update(self.num_steps, metrics["episode_return_mean"])
                if _passed(before, self.num_steps, cfg.eval_every):
                    best = self._evaluate_periodically(log, evaluations)
                    if progress is not None:
                        progress.note(evaluation.evaluation_line(self.evaluations[-1], best))
                if self.run_dir is not None and _passed(before, self.num_steps, cfg.save_every):
                    self._save_numbered()
                if self.run_dir is not None and cfg.checkpoint_every and self.num_updates % cfg.checkpoint_every == 0:
                    self._save_latest()
                if callback is not None and callback(self, metrics) is False:
                    break
        finally:
            if progress is not None:
                progress.close()
            for out in (log, evaluations):
                if out is not None:
                    out.close()
        if self.run_dir is not None:
            self._save_latest()
            if self.num_steps >= self.total_steps:
                self.save(self.run_dir / checkpoint.FINAL)
        return self

    def _evaluate_periodically(self, log: MetricsLog | None, evaluations: MetricsLog | None) -> bool:
        """eval_episodes deterministic episodes now: a row in `self.evaluations` (and evaluations.jsonl and
        TensorBoard), and a snapshot of the agent for best.pt when its mean is the best so far. Returns whether it
        is."""
        result = self.evaluate(self.config.eval_episodes)
        row = {"update": self.num_updates, "step": self.num_steps,
               **{k: result[k] for k in ("mean_return", "std_return", "mean_length", "capped", "returns", "lengths")}}
        self.evaluations.append(row)
        if evaluations is not None and log is not None:
            evaluations.write(row)
            log.add_scalars({k: row[k] for k in ("step", "mean_return", "std_return", "mean_length")}, "eval")
        if row["mean_return"] <= self.best_mean_return:
            return False
        self.best_mean_return = row["mean_return"]
        if self.run_dir is not None:
            self._best_snapshot = checkpoint.serialize(self.state_dict())
        return True

    def _save_latest(self) -> None:
        """checkpoints/latest.pt, and best.pt if a better evaluation came since the last checkpoint: best.pt is
        never newer than latest.pt, so a resumed run's best is one of the evaluations it keeps. Until best.pt is
        written, latest.pt carries it (BEST_PENDING): a process that ends between the two writes, or a disk that
        fills there, leaves the best evaluation kept with its model, which the resume writes (`_open_run_dir`)."""
        assert self.run_dir is not None
        state = self.state_dict()
        if self._best_snapshot is not None:
            state[BEST_PENDING] = torch.frombuffer(bytearray(self._best_snapshot), dtype=torch.uint8)
        checkpoint.save_atomic(state, self.run_dir / checkpoint.LATEST)
        self._write_best()

    def _write_best(self) -> None:
        if self._best_snapshot is not None:
            assert self.run_dir is not None
            checkpoint.write_bytes_atomic(self.run_dir / checkpoint.BEST, self._best_snapshot)
            self._best_snapshot = None

    def _save_numbered(self) -> None:
        """checkpoints/step_N.pt, keeping the newest keep_checkpoints of them (all with 0)."""
        assert self.run_dir is not None
        self.save(self.run_dir / "checkpoints" / f"step_{self.num_steps}.pt")
        keep = self.config.keep_checkpoints
        if keep:
            for old in checkpoint.numbered(self.run_dir)[:-keep]:
                old.unlink(missing_ok=True)

    def _open_evaluations(self) -> MetricsLog | None:
        """evaluations.jsonl without the rows after the checkpoint this agent goes on from, also where the run no
        longer evaluates (resumed with eval_every 0): every row kept is of this life of the run, as best.pt is.
        The best mean among them is the best so far. Returns the log to write to where the run evaluates."""
        if self.run_dir is None or not (self.config.eval_every or (self.run_dir / checkpoint.EVALUATIONS).exists()):
            return None
        log = MetricsLog(self.run_dir, tensorboard=False, keep_updates=self.num_updates, name=checkpoint.EVALUATIONS)
        self.evaluations = log.kept
        means = [row.get("mean_return") for row in log.kept]
        self.best_mean_return = max([m for m in means if isinstance(m, int | float) and not isinstance(m, bool)],
                                    default=-math.inf)
        if not self.config.eval_every:
            log.close()
            return None
        return log

    def _collector_or_new(self) -> RolloutCollector:
        if self._collector is None:
            # Seeds differ per (re)start so a resumed run does not replay the first episodes.
            seed = self.seed + 7919 * self.num_updates
            self._collector = RolloutCollector(self.env_spec, self.config, self.encoder, self.dist, self.obs_norm,
                                               self.reward_scaler, seed)
        return self._collector

    def _update(self) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        # 1. Collect a batch with pi_old (set going during the previous update's value fit, when there was one).
        collector = self._collector_or_new()
        if not collector.collecting:
            collector.start(self.actor, cfg.steps_per_env, self.sample_gen)
        batch = collector.finish(self.actor)
        t1 = time.perf_counter()
        # 2. Advantages, with V(s) and V(s') from the current critic.
        with torch.no_grad():
            if self.critic.cell is None:
                values, next_values = self.critic(batch.obs), self.critic(batch.next_obs)
            else:  # through the batch in time order, from where the last batch left the state
                values, next_values, critic_states = self._recurrent_values(batch)
        advantages, targets = adv_lib.estimate(cfg.advantage, batch.rewards, values, next_values,
                                               batch.terminated, batch.truncated, cfg.gamma, cfg.gae_lambda)
        raw_adv = advantages.reshape(-1)
        adv = adv_lib.normalize(raw_adv) if cfg.normalize_advantages else raw_adv
        # Rewards float32 holds can still sum, or square in the advantages' std, beyond it: an error, not a silent
        # string of skipped updates.
        if not bool(torch.isfinite(adv).all() and torch.isfinite(targets).all()):
            raise EnvError(_overflow_message(batch))
        # 3. Policy step: the update rule (update_rules.py), on all samples but a held-out share if asked.
        #    Vine sampling: the policy learns from the branches' Q estimates instead (vine.py).
        obs = batch.obs.reshape(-1, batch.obs.shape[-1])
        actions = batch.actions.reshape(-1, *batch.actions.shape[2:])
        if batch.states is not None:  # a recurrent actor learns from sequences (truncated BPTT)
            full, vine_stats = PolicyBatch.sequential(self.actor, batch.obs, batch.starts, batch.states, batch.actions,
                                                      batch.log_probs.reshape(-1), adv, cfg.recurrent_seq_len), {}
        elif batch.vine is None:
            full, vine_stats = PolicyBatch.of(self.actor, obs, actions, batch.log_probs.reshape(-1), adv), {}
        else:
            full, vine_stats = self._vine_policy_batch(batch.vine)
        train, holdout = full.split(cfg.holdout_fraction, self.shuffle_gen)
        step = self.update_rule.update(self.actor, train)
        step.update(policy_stats(self.actor, self.dist, train, holdout))
        step.update(vine_stats)
        self.num_steps += batch.env_steps
        self.num_updates += 1
        t2 = time.perf_counter()
        # The next batch needs only the new policy, not the critic: with worker processes it is collected while
        # this process fits V below (its advantages use the refitted critic all the same).
        if self.num_steps < self.total_steps:
            collector.start(self.actor, cfg.steps_per_env, self.sample_gen)
        # 4. Fit the value function on the batch's targets.
        if self.critic.cell is None:
            value_loss = self.fit_value(obs, targets.reshape(-1).detach())
        else:
            seq, order = Sequences.of(batch.obs, batch.starts, critic_states, cfg.recurrent_seq_len)
            value_loss = self.fit_value(seq, targets.reshape(-1)[order].detach())
        t3 = time.perf_counter()

        return self._metrics(batch, step, value_loss, values, targets, raw_adv, (t0, t1, t2, t3))

    def _vine_policy_batch(self, vine: vine_lib.VineBatch) -> tuple[PolicyBatch, dict[str, Any]]:
        """The policy's samples from the branches: K per rollout state, with the every-action weights
        (vine.all_action_advantages) or Q - mean_k Q for the self-normalized estimator; and their statistics."""
        cfg = self.config
        with torch.no_grad():
            last_values = self.critic(vine.last_obs)
        q = vine_lib.branch_q_values(vine.rewards, vine.steps, vine.terminated, last_values, cfg.gamma,
                                     cfg.vine_bootstrap)
        states, k = q.shape
        actions, old_log_probs = vine.actions, vine.old_log_probs
        run = torch.ones_like(q, dtype=torch.bool)  # branches that ran (every action: the unmasked ones)
        if vine.all_actions:
            run = old_log_probs.exp() > 0
            adv, groups = vine_lib.all_action_advantages(q, old_log_probs.exp()), None
            actions, old_log_probs = vine_lib.masked_stand_ins(actions, old_log_probs)
        else:
            adv = q - q.mean(-1, keepdim=True)
            groups = torch.arange(states, device=q.device).repeat_interleave(k)
        adv = adv.reshape(-1)
        if cfg.normalize_advantages:  # scaled only: a shift would change the every-action surrogate's gradient
            adv = adv / (adv.std() + 1e-8)
        actions = actions.reshape(states * k, *actions.shape[2:])
        batch = PolicyBatch.of(self.actor, vine.obs.repeat_interleave(k, 0), actions, old_log_probs.reshape(-1),
                               adv, groups)
        q_mean, q_spread = vine_lib.q_statistics(q, run)
        stats = {"vine_states": states, "vine_branches": int(run.sum()), "vine_steps": vine.env_steps,
                 "vine_q_mean": q_mean, "vine_q_spread": q_spread,
                 "vine_ended": float((vine.steps[run] < vine.rewards.shape[-1]).float().mean())}
        return batch, stats

    def _recurrent_values(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """V(s_t), V(s_{t+1}) and the state before each step of a recurrent critic over the batch; keeps the state
        where the batch ended for the next one (reset there anyway where the envs were reset)."""
        n = batch.obs.shape[1]
        state = self._critic_state
        if state is None or state.shape[0] != n:
            state = self.critic.cell.initial_state(n, self.device)
        values, next_values, before, self._critic_state = self.critic.sequence_values(
            batch.obs, batch.next_obs, batch.starts, state)
        return values, next_values, before

    def fit_value(self, inputs: Inputs, targets: Tensor) -> float:
        """Adam on the mean squared error, value_epochs passes of shuffled minibatches (a recurrent critic: of
        whole sequences, about value_minibatch steps each). Returns the loss over the whole batch after fitting."""
        cfg = self.config
        n = units(inputs)
        size = max(1, cfg.value_minibatch // unit_steps(inputs))
        for _ in range(cfg.value_epochs):
            order = torch.randperm(n, generator=self.shuffle_gen).to(targets.device)
            for start in range(0, n, size):
                part, rows = select(inputs, order[start : start + size])
                self.critic.mse_backward(part, targets[rows])  # grads of mean (V - target)^2
                self.critic_optimizer.step()
        with torch.no_grad():
            return float((self.critic(inputs) - targets).pow(2).mean())

    def _metrics(self, batch: Batch, step: dict[str, Any], value_loss: float, values: Tensor, targets: Tensor,
                 raw_adv: Tensor, times: tuple[float, float, float, float]) -> dict[str, Any]:
        t0, t1, t2, t3 = times
        var_t = float(targets.var())
        explained = 1.0 - float((targets - values).var()) / var_t if var_t > 0 else math.nan
        rets, lens = batch.episode_returns, batch.episode_lengths
        row: dict[str, Any] = {
            "update": self.num_updates,
            "step": self.num_steps,
            "episodes": len(rets),
            "episode_return_mean": float(np.mean(rets)) if rets else math.nan,
            "episode_length_mean": float(np.mean(lens)) if lens else math.nan,
            **step,
            "value_loss": value_loss,
            "explained_variance": explained,
            "advantage_mean": float(raw_adv.mean()),
            "advantage_std": float(raw_adv.std()),
            "fps": batch.env_steps / (t3 - t0),
            "time_rollout": t1 - t0,
            "time_policy": t2 - t1,
            "time_value": t3 - t2,
            "worker_restarts": batch.worker_restarts,
        }
        if hasattr(self.actor.head, "log_std"):
            row["log_std_mean"] = float(self.actor.head.log_std.detach().mean())
        return row

    # --- run directory -------------------------------------------------------------------------------------

    def _claim_run_dir(self) -> None:
        """Become the one writer of run_dir (`checkpoint.RunDirLock`, held until close()), clear the temporary
        files of killed writes, and check that this agent may write there: a new run needs a directory without a
        run (or overwrite); a loaded agent continues its own run, or starts a new one from its checkpoint in a
        directory without a run, and never writes into another run."""
        if self._lock is not None or self.run_dir is None:
            return
        lock = checkpoint.RunDirLock(self.run_dir)
        try:
            checkpoint.remove_temp_files(self.run_dir)
            if self._loaded_from is None:
                checkpoint.check_new_run_dir(self.run_dir, self.overwrite)
            elif not self._owns_run_dir():
                if checkpoint.holds_run(self.run_dir):
                    raise checkpoint.RunDirError(
                        f"{self.run_dir} holds another run than the one {self._loaded_from} was saved from; load into "
                        "an empty run directory to go on from this checkpoint there, or continue that run with "
                        f"TRPO.resume({str(self.run_dir)!r})")
            else:
                self._refuse_rewind()
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def _refuse_rewind(self) -> None:
        """A checkpoint older than its run's newest (best.pt, a numbered one) would go on in the run's directory by
        dropping the rows and checkpoints after it: refused, saying how to branch from it instead."""
        assert self.run_dir is not None and self._loaded_from is not None
        newest = checkpoint.newest(self.run_dir)
        if newest is None or newest.resolve() == self._loaded_from.resolve():
            return
        ahead = int(checkpoint.load(newest)["num_updates"])
        if ahead > self.num_updates:
            raise checkpoint.RunDirError(
                f"{self._loaded_from} is at update {self.num_updates} of the run in {self.run_dir}, which went on to "
                f"update {ahead} ({newest}): training it there would drop the updates after it. To branch from it, "
                "load it with another run_dir (an empty one); to go on with the run, "
                f"TRPO.resume({str(self.run_dir)!r})")

    def _owns_run_dir(self) -> bool:
        """Whether run_dir holds the run this (loaded) agent's checkpoint was saved from: the run ids match, or,
        for runs saved before run ids, the checkpoint lies in run_dir."""
        assert self.run_dir is not None and self._loaded_from is not None
        if self.run_id is not None and (self.run_dir / "config.yaml").is_file():
            with contextlib.suppress(checkpoint.RunDirError):
                return checkpoint.read_run_record(self.run_dir).get("run_id") == self.run_id
        return self._loaded_from.resolve().parent in (self.run_dir.resolve(), self.run_dir.resolve() / "checkpoints")

    def _open_run_dir(self) -> MetricsLog | None:
        if self.run_dir is None:
            return None
        if self._loaded_from is not None:
            # A loaded agent: its own run goes on (one from before run ids gets one now); in a directory without a
            # run (`_claim_run_dir` refused any other) it starts a new run from its checkpoint.
            if self.run_id is None or not self._owns_run_dir():
                self.run_id = uuid.uuid4().hex
            self._loaded_from = None  # from here on, the run in run_dir is this agent's
        elif self.run_id is None:  # a new run (with overwrite, the old run's files go first)
            checkpoint.clear_run(self.run_dir)
            self.run_id = uuid.uuid4().hex
        if self._best_pending_run not in (None, self.run_id):
            self._best_snapshot = None  # a new run from another run's checkpoint: that run's best is not this one's
        self._best_pending_run = None
        record = {"env": self.env_id, "seed": self.seed, "total_steps": self.total_steps, "preset": self.preset,
                  "run_id": self.run_id, **self.config.to_dict(), "versions": versions()}
        checkpoint.write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        self._write_best()  # the best that a checkpoint carried (_save_latest), now that its run goes on
        # Numbered checkpoints saved after this agent's step, by a life of the run killed after its last checkpoint.
        checkpoint.set_aside_after(self.run_dir, self.num_steps)
        return MetricsLog(self.run_dir, keep_updates=self.num_updates)

    # --- inference -----------------------------------------------------------------------------------------

    def _encoded(self, obs: Any, batched: bool, action_mask: Any) -> np.ndarray:
        if batched:
            encoded = self.encoder(obs, action_mask)
        else:
            encoded = self.encoder.one(obs, None if action_mask is None else {MASK_KEY: action_mask})[None]
        bad = self.encoder.empty_mask_row(encoded)
        if bad is not None:
            raise ValueError(f"the action mask of observation {bad} allows no action")
        return encoded

    @torch.no_grad()
    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True,
                action_mask: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(action, next state) for one observation, or (actions, next states) for a batch (leading dim), the
        actions as the env takes them: SB3's convention, `action, state = agent.predict(obs)`.

        A recurrent policy (config.recurrent) carries a state [B, state_dim] from call to call: pass the state the
        last call returned (None: the zero state) and `episode_start` (bool, one per observation), True where the
        observation is an episode's first (its state is reset). A feed-forward policy returns None as the state.
        An env that masks its actions through info["action_mask"] needs that mask here (a Dict observation carries
        its own)."""
        if self.encoder.mask_from == "info" and action_mask is None:
            raise ValueError("this env masks its actions: pass action_mask=info['action_mask']")
        try:
            batched = self.encoder.is_batched(obs)
            encoded = self._encoded(obs, batched, action_mask)
        except ObservationError as exc:
            raise ObservationError(f"predict: {exc}; pass one observation or a batch of them (leading dim)") from None
        finite = np.isfinite(encoded).all(axis=1)
        if not finite.all():  # the policy would answer it with an action all the same, a meaningless one
            which = f"observation {int(np.flatnonzero(~finite)[0])} of the batch" if batched else "the observation"
            raise ObservationError(f"predict: {which} holds NaN or an infinity")
        action, state = self._act(encoded, deterministic, self._state_in(state, len(encoded)),
                                  _starts(episode_start, len(encoded)))
        return (action if batched else action[0]), None if state is None else state.cpu().numpy()

    def _state_in(self, state: Any, rows: int) -> Tensor | None:
        """A recurrent policy's state for `rows` observations as a tensor on the device (zeros for None)."""
        if self.actor.cell is None:
            return None
        if state is None:
            return self.actor.initial_state(rows)
        arr = np.asarray(state, dtype=np.float32)
        expected = (rows, self.actor.cell.state_dim)
        if arr.shape != expected:
            raise ValueError(f"state must be the array predict returned, of shape {expected} here; got {arr.shape}")
        return torch.as_tensor(arr, device=self.device)

    @torch.no_grad()
    def _act(self, encoded: np.ndarray, deterministic: bool, state: Tensor | None,
             starts: np.ndarray) -> tuple[np.ndarray, Tensor | None]:
        """Env actions [B, ...] for encoded observations through the acting seam (policy.live), and the next state."""
        noise = None if deterministic else self.dist.noise((len(encoded), *self.actor.noise_shape), self.predict_gen,
                                                           self.device)
        action, state = policy_lib.live(self.actor, self.dist, self.obs_norm.frozen()).act(encoded, state, starts,
                                                                                             noise)
        return self.dist.to_env(action.cpu().numpy()), state

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
            self._collector = None  # the shared instance is about to be reset; start training afresh after
        going_on = np.zeros(1, bool)  # an episode's state is the initial one, set by run_episodes

        def act(obs: Any, info: dict[str, Any], state: Any) -> tuple[Any, Any]:
            mask = info.get(MASK_KEY) if self.encoder.mask_from == "info" else None
            actions, state = self._act(self._encoded(obs, False, mask), deterministic, state, going_on)
            return actions[0], state

        first_seed = (self.seed + 1_000_003) % 2**32 if seed is None else seed
        return evaluation.evaluate(self._eval_env, self.env_spec, act, self._state_in(None, 1), episodes, first_seed,
                                   self.config.eval_max_steps, video, render, progress)

    # --- persistence ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "env_id": self.env_id,
            "run_id": self.run_id,
            "preset": self.preset,
            "seed": self.seed,
            "num_steps": self.num_steps,
            "num_updates": self.num_updates,
            "total_steps": self.total_steps,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "update_rule": self.update_rule.state_dict(),
            "obs_norm": self.obs_norm.stats.state_dict(),
            "reward_norm": self.reward_scaler.stats.state_dict(),
            "rng": {"sample": self.sample_gen.get_state(), "shuffle": self.shuffle_gen.get_state(),
                    "predict": self.predict_gen.get_state()},
            "versions": versions(),
            "spaces": spaces_text(self.observation_space, self.action_space),  # named when another env refuses it
        }

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
        return cls._load(checkpoint.resolve(path), env, env is not None, device, run_dir, progress, overrides, trust)

    @classmethod
    def _load(cls, file: Path, env: EnvSpec | None, env_named: bool, device: str | None, run_dir: str | Path | None,
              progress: bool, overrides: dict[str, Any] | None, trust: bool) -> TRPO:
        """`load` of a checkpoint file; `env_named`: whether `env` is the user's (else a run record's, whose id is
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
        _refuse_unnamed(file, spec, env_named, config, changes, trust, checkpoint.CheckpointError)
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
        agent._loaded_from = file
        return agent

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (the config and env are the constructor's business)."""
        self.preset = state.get("preset")
        self.run_id = state.get("run_id")  # None in checkpoints from before run ids
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.update_rule.load_state_dict(state.get("update_rule", {}))  # absent from checkpoints before the rules
        self.obs_norm.stats.load_state_dict(state["obs_norm"])
        self.reward_scaler.stats.load_state_dict(state["reward_norm"])
        self.sample_gen.set_state(state["rng"]["sample"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        if state["rng"]["predict"].numel() == self.predict_gen.get_state().numel():
            self.predict_gen.set_state(state["rng"]["predict"])  # else saved on another device type: reseeded
        self.num_steps = int(state["num_steps"])
        self.num_updates = int(state["num_updates"])
        self.total_steps = int(state["total_steps"])
        pending = state.get(BEST_PENDING)  # best.pt as latest.pt carried it (_save_latest)
        if isinstance(pending, torch.Tensor):
            self._best_snapshot, self._best_pending_run = pending.numpy().tobytes(), self.run_id

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
        run_dir = Path(run_dir)
        fixed = sorted(set(overrides) - set(RESUME_SAFE_FIELDS))
        if fixed:
            raise ConfigError(f"a resumed run keeps its own config: {', '.join(fixed)} cannot change (these may: "
                              f"{', '.join(RESUME_SAFE_FIELDS)})")
        if not run_dir.is_dir():
            raise checkpoint.RunDirError(f"cannot resume: {run_dir} is not a run directory")
        lock = checkpoint.RunDirLock(run_dir)  # before reading: the run may not change under us
        try:
            agent = cls._resumed(run_dir, progress, env, overrides, trust)
        except BaseException:
            lock.release()
            raise
        agent._lock = lock
        checkpoint.remove_temp_files(run_dir)
        agent._write_best()  # one its latest.pt carried (a process that ended before writing it): due at once
        return agent

    @classmethod
    def _resumed(cls, run_dir: Path, progress: bool, env: EnvSpec | None, overrides: dict[str, Any],
                 trust: bool) -> TRPO:
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
        total = record.get("total_steps")
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise checkpoint.RunDirError(f"{run_dir / 'config.yaml'}: total_steps must be a positive integer, "
                                         f"got {total!r}")
        saved = checkpoint.newest(run_dir)
        if saved is not None:
            agent = cls._load(saved, spec, env is not None, None, run_dir, progress, overrides, trust)
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
            _refuse_unnamed(run_dir / "config.yaml", spec, env is not None, config, overrides, trust,
                            checkpoint.RunDirError)
            agent = cls(spec, config=config, seed=seed, run_dir=run_dir, progress=progress, overwrite=True)
            preset = record.get("preset")
            agent.preset = preset if isinstance(preset, str) else None
        agent.total_steps = total
        return agent

    @property
    def finished(self) -> bool:
        """Whether run_dir holds everything a run writes at its end: final.pt and (with eval_episodes) an
        eval.json of the final step. A run killed between its last checkpoint and these is not finished."""
        if self.run_dir is None or self.num_steps < self.total_steps:
            return False
        if not (self.run_dir / checkpoint.FINAL).is_file():
            return False
        if self.config.eval_episodes == 0:
            return True
        try:
            return json.loads((self.run_dir / "eval.json").read_text(encoding="utf-8"))["step"] == self.num_steps
        except (OSError, ValueError, TypeError, KeyError):
            return False

    def close(self) -> None:
        """Stop the env workers, close the envs and let go of the run directory."""
        try:
            if self._collector is not None:
                self._collector.close()
                self._collector = None
            close_env(self._eval_env)
        finally:
            if self._lock is not None:  # last: the workers forked from this process are gone by now
                self._lock.release()
                self._lock = None


def _refuse_unnamed(source: Path, env: EnvSpec, env_named: bool, config: TRPOConfig, named: Any, trust: bool,
                    error: type[ValueError]) -> None:
    """Refuse to open a stored run (`source`) whose env would import, or whose training would join, what no one
    named (trust.py); `env_named`: whether the user gave `env` (else it is stored); `named`: the fields they gave."""
    env_id = env if isinstance(env, str) else None
    found = [] if trust else trust_lib.unnamed(None if env_named else env_id, config, named,
                                                 env_id if env_named else None)
    if found:
        raise error(trust_lib.refusal(source, found))


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _starts(episode_start: Any, rows: int) -> np.ndarray:
    """predict's episode_start as [rows] bool (None: no observation starts an episode)."""
    if episode_start is None:
        return np.zeros(rows, bool)
    arr = np.asarray(episode_start)
    if arr.size != rows or arr.dtype.kind not in "biuf":
        raise ValueError(f"episode_start must hold one bool per observation ({rows}), got {episode_start!r}")
    return arr.reshape(rows).astype(bool)


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
                  f"{said}; pass an env id or a factory to keep them", UserWarning, stacklevel=3)
    return config.replace(**changes)


def _passed(before: int, now: int, every: int) -> bool:
    """Whether the env step count passed a multiple of `every` (0: never) going from `before` to `now`."""
    return every > 0 and now // every > before // every


def _overflow_message(batch: Batch) -> str:
    """Why a batch's returns are not finite although every reward was (check_reward): they overflow float32."""
    largest = float(batch.rewards.abs().max())
    return (f"the returns of this batch overflow float32 (its largest reward, after any scaling, is {largest:.3g}): "
            "scale the env's rewards down, or turn on normalize_reward")


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
