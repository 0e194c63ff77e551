"""class TRPO: composes rollouts, advantages, the policy update rule and the value fit into `learn`, and offers
`predict`, `evaluate`, `save`, `load` and `resume`.

One update (`_update`) reads like the paper's algorithm box:
    collect a batch with pi_old -> advantages -> policy step (the update rule: trpo's CG + line search, or
    another member of the family, update_rules.py) -> fit V -> log.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from torch import Tensor

from trpo import advantages as adv_lib
from trpo import checkpoint
from trpo import vine as vine_lib
from trpo.config import RESUME_SAFE_FIELDS, RUN_RECORD_KEYS, ConfigError, TRPOConfig, load_yaml, resolve_config
from trpo.logger import MetricsLog, Progress
from trpo.networks import Actor, Critic, check_device
from trpo.normalization import ObsNormalizer, RewardScaler
from trpo.optim import Adam
from trpo.rollout import Batch, EnvError, EnvSpec, RolloutCollector, env_failure, env_id_of, make_env
from trpo.spaces import MASK_KEY, ObsEncoder, make_distribution, mask_source
from trpo.update_rules import PolicyBatch, make_update_rule, policy_stats

Callback = Callable[["TRPO", dict[str, Any]], "bool | None"]


def versions() -> dict[str, str]:
    from trpo import __version__

    return {"trpo": __version__, "torch": str(torch.__version__), "gymnasium": str(gym.__version__),
            "python": platform.python_version()}


class TRPO:
    """Trust Region Policy Optimization on a Gymnasium environment.

    env: an env id ('CartPole-v1', 'module:EnvId'), a zero-argument factory, or a `gymnasium.Env` instance.
    config: the hyperparameters, exactly; when omitted, the env id's preset (if any) over the field defaults.
    **overrides: config fields set on top of that (`TRPO("Hopper-v5", max_kl=0.02)` is the Hopper preset with
        max_kl 0.02; with `config=`, that config with these fields replaced).
    run_dir: where learn() writes config.yaml, metrics.jsonl, TensorBoard events and checkpoints (optional).
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
        self.env_spec = env
        self.env_id = env_id_of(env)
        if config is None:
            config, self.preset = resolve_config(self.env_id, "auto", overrides=overrides)
        else:
            self.preset = None
            if overrides:
                config = TRPOConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.overwrite = overwrite
        self._run_dir_ready = False  # checked (new run) or adopted (resumed) by the first learn()
        self.progress = progress
        cfg = self.config
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        check_device(self.device)

        self._eval_env = make_env(env)
        self.observation_space = self._eval_env.observation_space
        self.action_space = self._eval_env.action_space
        self.dist = make_distribution(self.action_space)
        self.encoder = ObsEncoder(self.observation_space, self._mask_source(), self.dist.mask_groups)
        self.vine = self._vine_settings()

        torch.manual_seed(self.seed)  # network initialization
        image = self.encoder.image
        try:
            self.actor = Actor(self.encoder.dim, self.dist, cfg.actor_hidden, cfg.activation, cfg.init_log_std,
                               self.encoder.mask_dim, image, cfg.image_encoder)
            self.critic = Critic(self.encoder.dim, cfg.critic_hidden, cfg.activation, image, cfg.image_encoder)
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
        self._collector: RolloutCollector | None = None

    def _mask_source(self) -> str | None:
        """Action masks from a Dict observation's "action_mask" or from info["action_mask"] (Gymnasium's
        conventions; see spaces.mask_source): the env is reset once here to look at its info."""
        info = None
        if not (isinstance(self.observation_space, gym.spaces.Dict) and MASK_KEY in self.observation_space.spaces):
            try:
                info = self._eval_env.reset(seed=self.seed)[1]
            except Exception as exc:
                raise env_failure(exc, "reset()") from exc
        return mask_source(self.observation_space, self.dist, info)

    def _vine_settings(self) -> vine_lib.VineSettings | None:
        """sampling 'vine': the settings, once this env is known to allow it (its state can be saved and
        restored)."""
        cfg = self.config
        if cfg.sampling != "vine":
            return None
        settings = vine_lib.VineSettings(cfg.vine_states, cfg.vine_actions, cfg.vine_all_actions, cfg.vine_horizon)
        try:
            vine_lib.check_env(self._eval_env)
        except vine_lib.UnsupportedEnvStateError as exc:
            raise ConfigError(str(exc)) from exc
        return settings

    # --- training ------------------------------------------------------------------------------------------

    def learn(self, total_steps: int, callback: Callback | None = None) -> TRPO:
        """Train until `total_steps` env steps in all (a resumed agent continues from its count).

        callback(agent, metrics) runs after each update; returning False stops training early.
        """
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = int(total_steps)
        if self.num_steps < self.total_steps:
            self._collector_or_new()  # envs, workers, Ray: a failure here leaves no run files behind
        log = self._open_run_dir()
        progress = Progress(self.total_steps, self.num_steps) if self.progress else None
        try:
            while self.num_steps < self.total_steps:
                metrics = self._update()
                self.history.append(metrics)
                if log is not None:
                    log.write(metrics)
                if progress is not None:
                    progress.update(self.num_steps, metrics["episode_return_mean"])
                if self.run_dir is not None and self.config.checkpoint_every and \
                        self.num_updates % self.config.checkpoint_every == 0:
                    self.save(self.run_dir / checkpoint.LATEST)
                if callback is not None and callback(self, metrics) is False:
                    break
        finally:
            if progress is not None:
                progress.close()
            if log is not None:
                log.close()
        if self.run_dir is not None:
            self.save(self.run_dir / checkpoint.LATEST)
            if self.num_steps >= self.total_steps:
                self.save(self.run_dir / checkpoint.FINAL)
        return self

    def _collector_or_new(self) -> RolloutCollector:
        if self._collector is None:
            # Seeds differ per (re)start so a resumed run does not replay the first episodes.
            self._collector = RolloutCollector(
                self.env_spec, self.config.num_envs, self.config.vector_mode, self.encoder, self.dist,
                self.obs_norm, self.reward_scaler, self.device, seed=self.seed + 7919 * self.num_updates,
                num_workers=self.config.num_workers, ray_address=self.config.ray_address,
                max_worker_restarts=self.config.max_worker_restarts, vine=self.vine,
            )
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
            values, next_values = self.critic(batch.obs), self.critic(batch.next_obs)
        advantages, targets = adv_lib.estimate(cfg.advantage, batch.rewards, values, next_values,
                                               batch.terminated, batch.truncated, cfg.gamma, cfg.gae_lambda)
        raw_adv = advantages.reshape(-1)
        adv = adv_lib.normalize(raw_adv) if cfg.normalize_advantages else raw_adv
        # 3. Policy step: the update rule (update_rules.py), on all samples but a held-out share if asked.
        #    Vine sampling: the policy learns from the branches' Q estimates instead (vine.py).
        obs = batch.obs.reshape(-1, batch.obs.shape[-1])
        actions = batch.actions.reshape(-1, *batch.actions.shape[2:])
        if batch.vine is None:
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
        value_loss = self.fit_value(obs, targets.reshape(-1).detach())
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

    def fit_value(self, obs: Tensor, targets: Tensor) -> float:
        """Adam on the mean squared error, value_epochs passes of shuffled minibatches. Returns the loss over
        the whole batch after fitting."""
        cfg = self.config
        n = obs.shape[0]
        for _ in range(cfg.value_epochs):
            order = torch.randperm(n, generator=self.shuffle_gen).to(obs.device)
            for start in range(0, n, cfg.value_minibatch):
                idx = order[start : start + cfg.value_minibatch]
                self.critic.mse_backward(obs[idx], targets[idx])  # grads of mean (V - target)^2
                self.critic_optimizer.step()
        with torch.no_grad():
            return float((self.critic(obs) - targets).pow(2).mean())

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

    def _open_run_dir(self) -> MetricsLog | None:
        if self.run_dir is None:
            return None
        if not self._run_dir_ready:
            if self.num_updates == 0:  # a new run; a loaded agent continues the run it was saved from
                checkpoint.prepare_new_run_dir(self.run_dir, self.overwrite)
            self._run_dir_ready = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"env": self.env_id, "seed": self.seed, "total_steps": self.total_steps, "preset": self.preset,
                  **self.config.to_dict(), "versions": versions()}
        checkpoint.write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))
        return MetricsLog(self.run_dir, keep_updates=self.num_updates)

    # --- inference -----------------------------------------------------------------------------------------

    def _policy_input(self, obs: Any, batched: bool, action_mask: Any) -> Tensor:
        if batched:
            encoded = self.encoder(obs, action_mask)
        else:
            encoded = self.encoder.one(obs, None if action_mask is None else {MASK_KEY: action_mask})[None]
        bad = self.encoder.empty_mask_row(encoded)
        if bad is not None:
            raise ValueError(f"the action mask of observation {bad} allows no action")
        return torch.as_tensor(self.obs_norm.frozen()(encoded), device=self.device)

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True, action_mask: Any = None) -> np.ndarray:
        """Action(s) for one observation or a batch (leading dim), as the env takes them. An env that masks its
        actions through info["action_mask"] needs that mask here (a Dict observation carries its own)."""
        batched = self.encoder.is_batched(obs)
        if self.encoder.mask_from == "info" and action_mask is None:
            raise ValueError("this env masks its actions: pass action_mask=info['action_mask']")
        params = self.actor(self._policy_input(obs, batched, action_mask))
        action = self.dist.mode(params) if deterministic else self.dist.sample(params, self.predict_gen)
        env_action = self.dist.to_env(action.cpu().numpy())
        return env_action if batched else env_action[0]

    def evaluate(self, episodes: int = 10, deterministic: bool = True, seed: int | None = None) -> dict[str, Any]:
        """Run full episodes on a separate env; returns mean/std of the raw returns and the per-episode lists."""
        if episodes <= 0:
            raise ValueError(f"episodes must be positive, got {episodes}")
        env = self._eval_env
        if isinstance(self.env_spec, gym.Env):
            self._collector = None  # the shared instance is about to be reset; start training afresh after
        returns, lengths = [], []
        call = "reset()"
        try:  # the user's env: what it raises becomes one EnvError
            obs, info = env.reset(seed=self.seed + 1_000_003 if seed is None else seed)
            for _ in range(episodes):
                total, length, done = 0.0, 0, False
                while not done:
                    action = self.predict(obs, deterministic, info.get(MASK_KEY) if self.encoder.mask_from == "info"
                                          else None)
                    call = "step()"
                    obs, reward, terminated, truncated, info = env.step(action)
                    total += float(reward)
                    length += 1
                    done = bool(terminated or truncated)
                returns.append(total)
                lengths.append(length)
                call = "reset()"
                obs, info = env.reset()
        except Exception as exc:
            if isinstance(exc, EnvError | ConfigError):
                raise
            raise env_failure(exc, call) from exc
        return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                "episodes": episodes, "mean_length": float(np.mean(lengths)), "returns": returns,
                "lengths": lengths}

    # --- persistence ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "env_id": self.env_id,
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
        }

    def save(self, path: str | Path) -> None:
        """Atomically write everything needed to predict and to resume training."""
        checkpoint.save_atomic(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, env: EnvSpec | None = None, device: str | None = None,
             run_dir: str | Path | None = None, progress: bool = False,
             overrides: dict[str, Any] | None = None) -> TRPO:
        """Rebuild an agent from a checkpoint file or run directory. `env` defaults to the saved env id;
        `overrides` replaces config fields (the CLI allows only those that leave the math unchanged)."""
        file = checkpoint.resolve(path)
        state = checkpoint.load(file)
        config = TRPOConfig.from_dict({**state["config"], **(overrides or {})})
        if device is not None:
            config = config.replace(device=device)
        spec = env if env is not None else state["env_id"]
        if spec is None:
            raise checkpoint.CheckpointError(f"{file} was trained on an env without an id; pass env=...")
        agent = cls(spec, config=config, seed=state["seed"], run_dir=run_dir, progress=progress)
        try:
            agent.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            agent.close()
            trained_on = f", trained on {state['env_id']!r}" if state["env_id"] != env_id_of(spec) else ""
            raise checkpoint.CheckpointError(f"{file} does not fit env {spec!r}{trained_on} (or this trpo version): "
                                             f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        return agent

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (the config and env are the constructor's business)."""
        self.preset = state.get("preset")
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

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = False, **overrides: Any) -> TRPO:
        """The run in `run_dir`, ready to continue with `learn(agent.total_steps)`: from its latest checkpoint,
        or, if it was stopped before writing one, from the start with its saved config, env and seed (its
        earlier rows and events are removed). `overrides` may change only fields that leave the run's math
        unchanged (RESUME_SAFE_FIELDS)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise checkpoint.RunDirError(f"cannot resume: {run_dir} is not a run directory (no config.yaml)")
        fixed = sorted(set(overrides) - set(RESUME_SAFE_FIELDS))
        if fixed:
            raise ConfigError(f"a resumed run keeps its own config: {', '.join(fixed)} cannot change (these may: "
                              f"{', '.join(RESUME_SAFE_FIELDS)})")
        record = load_yaml(str(run_dir / "config.yaml"))
        if (run_dir / checkpoint.LATEST).is_file():
            agent = cls.load(run_dir / checkpoint.LATEST, run_dir=run_dir, progress=progress, overrides=overrides)
        else:
            if not record.get("env"):
                raise checkpoint.RunDirError(f"cannot resume {run_dir}: it was trained on an env without an id")
            values = {k: v for k, v in record.items() if k not in RUN_RECORD_KEYS}
            config = TRPOConfig.from_dict({**values, **overrides})
            agent = cls(record["env"], config=config, seed=record.get("seed", 0), run_dir=run_dir,
                        progress=progress, overwrite=True)
            agent.preset = record.get("preset")
        agent.total_steps = int(record.get("total_steps") or agent.total_steps)
        return agent

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()
            self._collector = None
        self._eval_env.close()
