"""A drop-in for sb3-contrib's TRPO: `from trpo.sb3 import TRPO` in place of `from sb3_contrib import TRPO`, the
script unchanged (docs/sb3.md: the argument table, what differs and why).

It takes sb3-contrib's constructor (trpo/sb3_args.py maps each argument onto trpo's config, or refuses it with one
line) and SB3's surface: learn with SB3 callbacks, predict, save/load (sb3-contrib's zips too),
get_parameters/set_parameters (sb3's names: trpo/sb3_zip.py), get_env/set_env, num_timesteps, ep_info_buffer,
policy, logger. Underneath is trpo's own `Learner` (one update: collect, advantages, the natural
gradient step and line search, the value fit) and `Predictor`, composed, not reimplemented; the env is an SB3 VecEnv
(an id or a Gymnasium env wrapped as SB3 wraps them) stepped by the `sb3_vecenv` rollout backend, which calls the
callbacks' on_step after each VecEnv step, as SB3 does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import Any, TypeVar, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from trpo.extras import install_hint

try:  # SB3's own callbacks, logger and VecEnvs: the scripts being switched already have them
    from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.preprocessing import maybe_transpose
    from stable_baselines3.common.save_util import recursive_getattr
    from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
    from stable_baselines3.common.utils import FloatSchedule, configure_logger, get_device, safe_mean, set_random_seed
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_normalize
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"trpo.sb3 needs Stable-Baselines3 ({exc.name} is missing): {install_hint('sb3')}",
                              name=exc.name) from exc

from trpo.config import TRPOConfig
from trpo.learner import Learner
from trpo.predictor import Predictor
from trpo.rollout.sb3_vecenv import RolloutStoppedError, VecEnvRunner, VecEnvSource
from trpo.sb3_args import ACTIVATIONS, config_fields, kl_dims, refuse, space_from_json, space_to_json
from trpo.sb3_zip import TRPOPolicy, read_sb3_zip, read_trpo_zip, zip_params
from trpo.update_rules import PolicyBatch, UpdateRule

__all__ = ["TRPO"]
SelfTRPO = TypeVar("SelfTRPO", bound="TRPO")
_ARGS = ("policy", "learning_rate", "n_steps", "batch_size", "gamma", "cg_max_steps", "cg_damping",
         "line_search_shrinking_factor", "line_search_max_iter", "n_critic_updates", "gae_lambda", "use_sde",
         "sde_sample_freq", "rollout_buffer_class", "rollout_buffer_kwargs", "normalize_advantage", "target_kl",
         "sub_sampling_factor", "stats_window_size", "tensorboard_log", "policy_kwargs", "verbose", "seed", "device")
_STATE_DICTS = ("policy", "policy.optimizer")  # get_parameters' objects, as sb3-contrib's TRPO names them


class _Spaces(gym.Env[Any, Any]):
    """The spaces of a VecEnv (or of a saved model) where trpo's learner asks for an env to read them from."""

    def __init__(self, observation_space: spaces.Space[Any], action_space: spaces.Space[Any]) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return None, {}


class _SubSampled:
    """sb3-contrib's sub_sampling_factor k: the policy step (gradient, Fisher products, line search) on every k-th
    sample of the batch in the order sb3's rollout buffer flattens it (env by env), its advantages normalized
    again on those samples (sb3 normalizes the sub-sample's); the critic still fits the whole batch."""

    def __init__(self, rule: UpdateRule, k: int, num_envs: int, normalize: bool) -> None:
        self.rule, self.k, self.num_envs, self.normalize = rule, k, num_envs, normalize

    def update(self, actor: Any, batch: PolicyBatch) -> dict[str, Any]:
        n = batch.size
        order = torch.arange(n).reshape(n // self.num_envs, self.num_envs).T.reshape(-1)[:: self.k]
        part = batch.subset(order.to(batch.obs.device))
        if self.normalize:
            adv = part.advantages
            part = dataclasses.replace(part, advantages=(adv - adv.mean()) / (adv.std() + 1e-8))
        return self.rule.update(actor, part)

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)


class TRPO:
    """sb3-contrib's TRPO, trained by trpo. Arguments as sb3-contrib documents them (docs/sb3.md's table says
    where each goes); one with no exact counterpart raises a ValueError naming it."""

    policy_aliases = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")

    def __init__(self, policy: str, env: GymEnv | str | None, learning_rate: float | Schedule = 1e-3,
                 n_steps: int = 2048, batch_size: int = 128, gamma: float = 0.99, cg_max_steps: int = 15,
                 cg_damping: float = 0.1, line_search_shrinking_factor: float = 0.8, line_search_max_iter: int = 10,
                 n_critic_updates: int = 10, gae_lambda: float = 0.95, use_sde: bool = False,
                 sde_sample_freq: int = -1, rollout_buffer_class: Any = None,
                 rollout_buffer_kwargs: dict[str, Any] | None = None, normalize_advantage: bool = True,
                 target_kl: float = 0.01, sub_sampling_factor: int = 1, stats_window_size: int = 100,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None, verbose: int = 0,
                 seed: int | None = None, device: torch.device | str = "auto", _init_setup_model: bool = True,
                 _spaces: tuple[spaces.Space[Any], spaces.Space[Any]] | None = None) -> None:
        args = {name: value for name, value in locals().items() if name in _ARGS}
        self.args = args
        self.verbose, self.seed, self.tensorboard_log = verbose, seed, tensorboard_log
        self.stats_window_size = stats_window_size
        self.device = get_device(device)
        if verbose >= 1:
            print(f"Using {self.device} device")
        self.env: VecEnv | None = None
        if env is not None:
            self.env = BaseAlgorithm._wrap_env(maybe_make_env(env, verbose), verbose, monitor_wrapper=True)
            self.observation_space, self.action_space = self.env.observation_space, self.env.action_space
        elif _spaces is not None:
            self.observation_space, self.action_space = _spaces
        else:
            raise ValueError("trpo.sb3.TRPO needs an env (or, through TRPO.load, the saved model's spaces)")
        self.n_envs = 1 if self.env is None else self.env.num_envs
        self.lr_schedule = FloatSchedule(learning_rate)
        fields = config_fields(args, self.observation_space, self.action_space, self.n_envs,
                               float(self.lr_schedule(1.0)), self.device.type)
        self.config = TRPOConfig(**fields)
        self.n_steps, self.batch_size, self.gamma = n_steps, batch_size, gamma
        self.target_kl, self.sub_sampling_factor = target_kl, sub_sampling_factor
        self.num_timesteps = 0
        self._total_timesteps = 0
        self._num_timesteps_at_start = 0
        self._n_updates = 0
        self._episode_num = 0
        self._current_progress_remaining = 1.0
        self.start_time = 0
        self.ep_info_buffer: deque[dict[str, Any]] = deque(maxlen=stats_window_size)
        self.ep_success_buffer: deque[float] = deque(maxlen=stats_window_size)
        self._logger: Logger | None = None
        self._custom_logger = False
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        """Build trpo's learner and predictor (sb3's _setup_model: the networks), seeded as sb3 seeds."""
        cfg = self.config
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        if self.seed is not None:
            set_random_seed(self.seed, using_cuda=self.device.type == "cuda")
            self.action_space.seed(self.seed)
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % 2**31)  # type: ignore[operator]
        source = VecEnvSource(self.env, seed=self.seed is not None)
        self.learner = Learner.for_env(cfg, source, _Spaces(self.observation_space, self.action_space), seed,
                                       self.device)
        if self.sub_sampling_factor > 1:
            self.learner.update_rule = _SubSampled(self.learner.update_rule, self.sub_sampling_factor, cfg.num_envs,
                                                   cfg.normalize_advantages)
        self.predictor = Predictor(self.learner, self.device, seed + 2)
        self.policy = TRPOPolicy(self)
        self._kl_dims = kl_dims(self.action_space)

    # --- the env ---------------------------------------------------------------------------------------------

    def get_env(self) -> VecEnv | None:
        return self.env

    def get_vec_normalize_env(self) -> VecNormalize | None:
        return None if self.env is None else unwrap_vec_normalize(self.env)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """Train on `env` from now on (same spaces and number of envs); its episodes start afresh at the next learn."""
        venv = BaseAlgorithm._wrap_env(maybe_make_env(env, self.verbose), self.verbose)
        if venv.observation_space != self.observation_space or venv.action_space != self.action_space:
            raise ValueError(f"set_env: the env's spaces ({venv.observation_space}, {venv.action_space}) are not the "
                             f"model's ({self.observation_space}, {self.action_space})")
        if venv.num_envs != self.n_envs:
            raise ValueError(f"set_env: the model's batch holds {self.n_envs} envs, this VecEnv {venv.num_envs}")
        self.env = venv
        self.learner.close()
        self.learner.env_spec = VecEnvSource(venv, seed=self.seed is not None)

    # --- logging ---------------------------------------------------------------------------------------------

    @property
    def logger(self) -> Logger:
        if self._logger is None:
            self._logger = configure_logger(self.verbose, None, "TRPO", True)
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        self._logger, self._custom_logger = logger, True

    def _dump_logs(self, iteration: int) -> None:
        """sb3's table: time and rollout figures, the last update's train figures."""
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        log = self.logger
        log.record("time/iterations", iteration, exclude="tensorboard")
        if self.ep_info_buffer:
            log.record("rollout/ep_rew_mean", safe_mean([e["r"] for e in self.ep_info_buffer]))
            log.record("rollout/ep_len_mean", safe_mean([e["l"] for e in self.ep_info_buffer]))
        if self.ep_success_buffer:
            log.record("rollout/success_rate", safe_mean(list(self.ep_success_buffer)))
        log.record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        log.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        log.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        log.dump(step=self.num_timesteps)

    def _record_update(self, row: dict[str, Any]) -> None:
        """sb3-contrib's train/ figures from trpo's metrics row (logger.py): the KL per action dimension, as
        sb3-contrib's, 0 where the line search failed; the policy objective as its gain over theta_old."""
        accepted = bool(row["step_accepted"])
        log = self.logger
        log.record("train/policy_objective", row["surrogate_gain"])
        log.record("train/value_loss", row["value_loss"])
        log.record("train/kl_divergence_loss", row["kl"] / self._kl_dims if accepted else 0.0)
        log.record("train/explained_variance", row["explained_variance"])
        log.record("train/is_line_search_success", float(accepted))
        log_std = getattr(self.learner.actor.head, "log_std", None)
        if isinstance(log_std, torch.Tensor):
            log.record("train/std", float(log_std.detach().exp().mean()))
        log.record("train/n_updates", self._n_updates, exclude="tensorboard")

    # --- training --------------------------------------------------------------------------------------------

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool) -> BaseCallback:
        if isinstance(callback, list):
            callback = CallbackList(callback)
        if not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        if progress_bar:
            callback = CallbackList([callback, ProgressBarCallback()])
        callback.init_callback(cast(BaseAlgorithm, self))
        return callback

    def _setup_learn(self, total_timesteps: int, reset_num_timesteps: bool, tb_log_name: str) -> int:
        self.start_time = time.time_ns()
        if reset_num_timesteps:
            self.ep_info_buffer = deque(maxlen=self.stats_window_size)
            self.ep_success_buffer = deque(maxlen=self.stats_window_size)
            self.num_timesteps = self._episode_num = 0
            self.learner.close()  # the envs are reset at the next batch, as sb3 resets them
        else:
            total_timesteps += self.num_timesteps
        self._total_timesteps = total_timesteps
        self._num_timesteps_at_start = self.num_timesteps
        if not self._custom_logger:
            self._logger = configure_logger(self.verbose, self.tensorboard_log, tb_log_name, reset_num_timesteps)
        return total_timesteps

    def _hooks(self, runner: VecEnvRunner, callback: BaseCallback, total: int) -> None:
        """The sb3 calls inside a rollout: callbacks at its start, after each VecEnv step, at its end; the
        critic's learning rate from the schedule once the batch is in (sb3 updates it as train() starts)."""
        step_locals: dict[str, Any] = {"self": self, "callback": callback, "env": self.env,
                                       "n_rollout_steps": self.n_steps}
        n_envs = self.n_envs

        def on_start() -> None:
            step_locals["n_steps"] = 0
            callback.on_rollout_start()

        def on_step(actions: np.ndarray, new_obs: Any, rewards: np.ndarray, dones: np.ndarray,
                    infos: list[dict[str, Any]]) -> bool:
            self.num_timesteps += n_envs
            step_locals.update(actions=actions, clipped_actions=actions, new_obs=new_obs, rewards=rewards,
                               dones=dones, infos=infos, n_steps=step_locals["n_steps"] + 1)
            callback.update_locals(step_locals)
            if not callback.on_step():
                return False
            if dones.any():
                for i, info in enumerate(infos):
                    if "episode" in info:
                        self.ep_info_buffer.append(info["episode"])
                    if "is_success" in info and dones[i]:
                        self.ep_success_buffer.append(info["is_success"])
            return True

        def on_end() -> None:
            callback.update_locals(step_locals)
            callback.on_rollout_end()
            self._current_progress_remaining = 1.0 - self.num_timesteps / total
            self.learner.critic_optimizer.lr = float(self.lr_schedule(self._current_progress_remaining))

        runner.on_rollout_start, runner.on_step, runner.on_rollout_end = on_start, on_step, on_end

    def learn(self: SelfTRPO, total_timesteps: int, callback: MaybeCallback = None, log_interval: int = 1,
              tb_log_name: str = "TRPO", reset_num_timesteps: bool = True, progress_bar: bool = False) -> SelfTRPO:
        """sb3's learn: batches of n_steps per env until num_timesteps reaches total_timesteps (or callback stops);
        each batch is one trpo update (learner.update), its table dumped every log_interval updates."""
        if self.env is None:
            raise ValueError("learn() needs an env: pass one to the constructor, to load(), or to set_env()")
        total = total_timesteps = self._setup_learn(total_timesteps, reset_num_timesteps, tb_log_name)  # sb3's locals
        cb = self._init_callback(callback, progress_bar)
        cb.on_training_start(locals(), globals())
        runner = self.learner.collector_or_new().runner
        assert isinstance(runner, VecEnvRunner)
        self._hooks(runner, cb, total)
        iteration = 0
        try:
            while self.num_timesteps < total:
                # the learner sets the next batch going (with its noise drawn) only if one will be needed
                self.learner.total_steps = self.learner.num_steps + (total - self.num_timesteps)
                try:
                    row = self.learner.update()
                except RolloutStoppedError:
                    break
                iteration += 1
                self._n_updates += 1
                self._record_update(row)
                if log_interval is not None and iteration % log_interval == 0:
                    self._dump_logs(iteration)
        finally:
            runner.on_rollout_start = runner.on_step = runner.on_rollout_end = None
        cb.on_training_end()
        return self

    # --- acting ----------------------------------------------------------------------------------------------

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:
        """sb3's predict: one observation or a VecEnv's batch; channel-last images are transposed as sb3 does."""
        if isinstance(self.observation_space, spaces.Dict) and isinstance(observation, dict):
            observation = {k: maybe_transpose(np.asarray(v), self.observation_space.spaces[k])
                           for k, v in observation.items()}
        elif isinstance(self.observation_space, spaces.Box):
            observation = maybe_transpose(np.asarray(observation), self.observation_space)
        return self.predictor.predict(observation, state, episode_start, deterministic)

    # --- persistence -----------------------------------------------------------------------------------------

    def save(self, path: str | Path | io.BufferedIOBase, exclude: Any = None, include: Any = None) -> None:
        """A zip as sb3 writes (".zip" added to a path without a suffix), holding trpo's data, not sb3's: data.json
        (the constructor's arguments, the spaces, the counters) and trpo.pt (the learner's state, torch tensors
        only: loaded with weights_only). `exclude`/`include` are refused: the learner's state is one piece."""
        if exclude or include:
            raise refuse("save(exclude/include)", "trpo saves the learner's state whole")
        if isinstance(path, str | Path):
            path = Path(path)
            path = path.with_suffix(".zip") if path.suffix == "" else path
        args = dict(self.args)
        args["learning_rate"] = float(self.lr_schedule(1.0))  # a schedule: its starting value
        if args["policy_kwargs"] and "activation_fn" in args["policy_kwargs"]:
            args["policy_kwargs"] = {**args["policy_kwargs"],
                                     "activation_fn": ACTIVATIONS[args["policy_kwargs"]["activation_fn"]]}
        args["device"] = str(args["device"])
        data = {"format": "trpo.sb3/1", "args": args, "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space), "num_timesteps": self.num_timesteps,
                "n_updates": self._n_updates}
        state = {**self.learner.state_dict(), "predict_rng": self.predictor.gen.get_state()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("data.json", json.dumps(data, default=_json_default))
            archive.writestr("trpo.pt", buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path | io.BufferedIOBase, env: GymEnv | None = None, device: torch.device | str = "auto",
             custom_objects: dict[str, Any] | None = None, print_system_info: bool = False, force_reset: bool = True,
             **kwargs: Any) -> TRPO:
        """A model saved by `save`, or by sb3-contrib's TRPO where its policy maps onto trpo's networks
        (trpo/sb3_zip.py), on `env` if given; kwargs replace saved arguments."""
        if isinstance(path, str | Path) and not Path(path).exists() and Path(f"{path}.zip").exists():
            path = Path(f"{path}.zip")
        saved = read_trpo_zip(path)
        if saved is None:
            args, spaces_, params, (steps, updates) = read_sb3_zip(path, device, custom_objects, print_system_info)
        else:
            data, state = saved
            args, steps, updates = data["args"], int(data["num_timesteps"]), int(data["n_updates"])
            if args["policy_kwargs"] and isinstance(args["policy_kwargs"].get("activation_fn"), str):
                by_name = {name: act for act, name in ACTIVATIONS.items()}
                args["policy_kwargs"] = {**args["policy_kwargs"],
                                         "activation_fn": by_name[args["policy_kwargs"]["activation_fn"]]}
            spaces_ = (space_from_json(data["observation_space"]), space_from_json(data["action_space"]))
        model = cls(env=env, _spaces=spaces_, **{**args, "device": device, **kwargs})
        if (model.observation_space, model.action_space) != spaces_:
            raise ValueError(f"load: the env's spaces ({model.observation_space}, {model.action_space}) are not the "
                             f"saved model's {spaces_}")
        if saved is None:
            model.set_parameters(params)
            model.learner.num_steps, model.learner.num_updates = steps, updates
        else:
            model.learner.load_state_dict(state)
            model.predictor.gen.set_state(state["predict_rng"])
        model.num_timesteps, model._n_updates = steps, updates
        return model

    def get_parameters(self) -> dict[str, dict[str, Any]]:
        """SB3's: "policy" (the actor's and critic's tensors under sb3's names, sharing their storage) and
        "policy.optimizer" (the critic's Adam in sb3's layout), as trpo/sb3_zip.py maps them."""
        return {name: recursive_getattr(self, name).state_dict() for name in _STATE_DICTS}

    def set_parameters(self, load_path_or_dict: str | Path | io.BufferedIOBase | dict[str, dict[str, Any]],
                       exact_match: bool = True, device: torch.device | str = "auto") -> None:
        """SB3's: a get_parameters dict, or a zip (saved by sb3-contrib or by this class); any object name SB3
        would resolve (e.g. "policy.actor": trpo's actor under trpo's names). exact_match: every object of
        get_parameters and every tensor of a module, else the ValueError / RuntimeError SB3 raises; the names are
        checked before anything is loaded."""
        params = load_path_or_dict if isinstance(load_path_or_dict, dict) else zip_params(load_path_or_dict, device,
                                                                                              self.policy)
        objects = {}
        for name in params:
            try:
                objects[name] = recursive_getattr(self, name)
            except Exception as exc:
                raise ValueError(f"Key {name} is an invalid object name.") from exc
        if exact_match and set(objects) != set(_STATE_DICTS):
            raise ValueError("Names of parameters do not match agents' parameters: "
                             f"expected {set(_STATE_DICTS)}, got {set(objects)}")
        for name, obj in objects.items():
            if isinstance(obj, torch.nn.Module | TRPOPolicy):
                obj.load_state_dict(params[name], strict=exact_match)
            else:  # an optimizer's state has no strict
                obj.load_state_dict(params[name])


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise refuse(f"saving the argument value {value!r}", "save() stores the arguments as JSON")
