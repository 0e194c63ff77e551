"""`trpo bench --peer tianshou`: Tianshou's TRPO as its MuJoCo example runs it, recorded as a run directory.

    trpo bench --env Hopper-v5 --peer tianshou
    python -m trpo.peers tianshou --env Hopper-v5 --seed 0 --steps 1000000 --run-dir runs/x/tianshou-s0

What runs is examples/mujoco/mujoco_trpo.py of thu-ml/tianshou v2.0.1 (commit 1d579674a9ee): its
networks, initialisation, settings and vector envs built by Tianshou's own classes (`TRPO`, `Collector`,
`VectorEnvNormObs`, `EnvFactoryRegistered`), with its trainer's training step (collect 1024 env steps, one update on
them, clear the buffer) written out here, so that each update gets a metrics row and the run a checkpoint. Left out
of the example: its per-epoch test episodes and its logger (they change no weight); envpool, which its
make_mujoco_env prefers when installed (Gymnasium's MuJoCo tasks run instead, the ones trpo trains on); its
subprocess envs (the 16 envs step in one process, one core per run as every `trpo bench` run: the same episodes).

None of trpo's algorithm, networks, envs or config is used (only checkpoint.py's writes and loads, peers.py's row
reader and extras' install hint), so the numbers are Tianshou's own. It writes only in the run directory it is
given, and seeds numpy's and torch's global generators as the example does: it runs in a process of its own
(`python -m trpo.peers`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trpo.checkpoint import load, open_text, save_atomic, write_text_atomic
from trpo.extras import install_hint

EXAMPLE = "examples/mujoco/mujoco_trpo.py, thu-ml/tianshou v2.0.1 (1d579674a9eea34d707c35c12f0ff7c077c3f800)"
# The example's defaults (its main()'s keyword arguments), the same for every task.
SETTINGS = dict(hidden_sizes=[64, 64], activation="tanh", lr=1e-3, lr_decay=True, gamma=0.99, gae_lambda=0.95,
                return_scaling=True, advantage_normalization=True, max_kl=0.01, backtrack_coeff=0.8,
                max_backtracks=10, optim_critic_iters=20, action_bound_method="clip", num_training_envs=16,
                collection_step_num_env_steps=1024, buffer_size=4096, batch_size=None,
                update_step_num_repetitions=1, obs_norm=True, epoch=100, epoch_num_steps=30000)
# The tasks of its README's TRPO table (MuJoCo v3 then; the example's default task is Ant-v4).
TASKS = ("Ant", "HalfCheetah", "Hopper", "Walker2d", "Swimmer", "Humanoid", "Reacher", "InvertedPendulum",
         "InvertedDoublePendulum")
CHECKPOINT = Path("checkpoints") / "tianshou.pt"
EVAL_SEED_OFFSET = 1_000_003  # the evaluation env's seed is seed + this, as the sb3-contrib peer's


def tianshou_settings(env_id: str) -> dict[str, Any]:
    """The example's settings for `env_id` (a task of its table, -v4 or -v5); ValueError for another env, or where
    tianshou is not installed."""
    match = re.fullmatch(r"(\w+)-v([45])", env_id)
    if not match or match.group(1) not in TASKS:
        raise ValueError(f"Tianshou's MuJoCo TRPO example has no run for {env_id}: it covers "
                         f"{', '.join(f'{name}-v5' for name in TASKS)} (and their -v4)")
    if importlib.util.find_spec("tianshou") is None:
        raise ValueError(f"the tianshou peer needs tianshou: {install_hint('bench')}")
    return dict(SETTINGS)


def epochs(settings: dict[str, Any], steps: int) -> int:
    """The example's epochs, or as many as `steps` needs: its learning rate decays linearly to 0 over
    epochs x ceil(epoch_num_steps / 1024) updates, so a budget within its 100 epochs (3,072,000 steps) is the first
    part of its run, as the 1M figures of Tianshou's README are, and a longer one decays over the budget."""
    per_epoch = math.ceil(settings["epoch_num_steps"] / settings["collection_step_num_env_steps"])
    return max(settings["epoch"], math.ceil(steps / (per_epoch * settings["collection_step_num_env_steps"])))


def _gaussian(loc_scale: tuple[Any, Any]) -> Any:
    """The example's action distribution: independent Normals over the action dimensions."""
    from torch.distributions import Independent, Normal

    loc, scale = loc_scale
    return Independent(Normal(loc, scale), 1)


def _agent(settings: dict[str, Any], env: Any, max_epochs: int) -> Any:
    """The example's TRPO: tanh MLPs, orthogonal init (gain sqrt 2), log std -0.5, the mean's last layer scaled by
    0.01, Adam for the critic with linear learning-rate decay, actions clipped to [-1, 1] then scaled."""
    import torch
    from tianshou.algorithm import TRPO
    from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory, LRSchedulerFactoryLinear
    from tianshou.utils.net.common import Net
    from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic

    shape, actions = env.observation_space.shape, env.action_space.shape
    actor = ContinuousActorProbabilistic(
        preprocess_net=Net(state_shape=shape, hidden_sizes=settings["hidden_sizes"], activation=torch.nn.Tanh),
        action_shape=actions, unbounded=True)
    critic = ContinuousCritic(
        preprocess_net=Net(state_shape=shape, hidden_sizes=settings["hidden_sizes"], activation=torch.nn.Tanh))
    torch.nn.init.constant_(actor.sigma_param, -0.5)
    for module in [*actor.modules(), *critic.modules()]:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
            torch.nn.init.zeros_(module.bias)
    for module in actor.mu.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.bias)
            module.weight.data.mul_(0.01)
    optim = AdamOptimizerFactory(lr=settings["lr"])
    if settings["lr_decay"]:
        optim.with_lr_scheduler_factory(LRSchedulerFactoryLinear(
            max_epochs=max_epochs, epoch_num_steps=settings["epoch_num_steps"],
            collection_step_num_env_steps=settings["collection_step_num_env_steps"]))
    policy = ProbabilisticActorPolicy(actor=actor, dist_fn=_gaussian, action_scaling=True,
                                      action_bound_method=settings["action_bound_method"],
                                      action_space=env.action_space)
    return TRPO(policy=policy, critic=critic, optim=optim, gamma=settings["gamma"],
                gae_lambda=settings["gae_lambda"], return_scaling=settings["return_scaling"],
                advantage_normalization=settings["advantage_normalization"],
                optim_critic_iters=settings["optim_critic_iters"], max_kl=settings["max_kl"],
                backtrack_coeff=settings["backtrack_coeff"], max_backtracks=settings["max_backtracks"])


def _rms_state(rms: Any) -> dict[str, Any]:
    import torch

    return {"mean": torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)),
            "var": torch.as_tensor(np.asarray(rms.var, dtype=np.float64)), "count": int(rms.count)}


def _set_rms(rms: Any, state: dict[str, Any]) -> None:
    rms.mean, rms.var, rms.count = state["mean"].numpy(), state["var"].numpy(), state["count"]


def _save(path: Path, algorithm: Any, obs_rms: Any, env_step: int, update: int) -> None:
    """Everything the training goes on from: weights and Adam's state, the learning-rate schedule, the return and
    observation statistics, the random generators (the envs' episodes in progress start again)."""
    import torch

    state = np.random.get_state(legacy=True)  # the default, spelled out: numpy's stubs type the call without it as
    assert isinstance(state, tuple)  # legacy=False's dict; the legacy state is MT19937's tuple
    _, keys, pos, has_gauss, gauss = state
    save_atomic({"algorithm": _plain(algorithm.state_dict()),
                 "lr_schedulers": _plain([s.state_dict() for s in algorithm.lr_schedulers]),
                 "ret_rms": _rms_state(algorithm.ret_rms), "obs_rms": _rms_state(obs_rms),
                 "torch_rng": torch.get_rng_state(),
                 "numpy_rng": {"keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos),
                               "has_gauss": int(has_gauss), "gauss": float(gauss)},
                 "env_step": env_step, "update": update}, path)


def _plain(value: Any) -> Any:
    """`value` with numpy's scalars as Python numbers (the decayed learning rate is one), which a checkpoint, read
    with weights_only, holds."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value.item() if isinstance(value, np.generic) else value


def _restore(state: dict[str, Any], algorithm: Any, obs_rms: Any) -> tuple[int, int]:
    import torch

    algorithm.load_state_dict(state["algorithm"])
    for scheduler, saved in zip(algorithm.lr_schedulers, state["lr_schedulers"], strict=True):
        scheduler.load_state_dict(saved)
    _set_rms(algorithm.ret_rms, state["ret_rms"])
    _set_rms(obs_rms, state["obs_rms"])
    torch.set_rng_state(state["torch_rng"])
    rng = state["numpy_rng"]
    np.random.set_state(("MT19937", rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"],
                         rng["gauss"]))
    return state["env_step"], state["update"]


class _Episodes:
    """The episodes that end while the envs step (a Collector's on-step hook): their returns and lengths. Tianshou
    2.0.1's CollectStats.lens counts an episode's steps since the buffer was last cleared, which on-policy is at
    most one collect's 1024 steps, so the lengths (and the returns, for one record of both) are counted here."""

    def __init__(self, envs: int) -> None:
        self.returns, self.lengths = np.zeros(envs), np.zeros(envs, dtype=int)
        self.ended: list[tuple[float, int]] = []

    def __call__(self, action_batch: Any, rollout_batch: Any) -> None:
        self.returns += rollout_batch.rew
        self.lengths += 1
        for i in np.flatnonzero(np.logical_or(rollout_batch.terminated, rollout_batch.truncated)):
            self.ended.append((float(self.returns[i]), int(self.lengths[i])))
            self.returns[i], self.lengths[i] = 0.0, 0

    def take(self) -> list[tuple[float, int]]:
        ended, self.ended = self.ended, []
        return ended


def _line_search(caught: list[warnings.WarningMessage]) -> tuple[int, bool]:
    """(backtracking steps, step accepted) of an update, from the warnings Tianshou's TRPO reports them by; the
    other warnings are shown as they would have been."""
    steps, accepted = 0, True
    for w in caught:
        text = str(w.message)
        if text.startswith("Backtracking to step "):
            steps = int(text.removeprefix("Backtracking to step ").rstrip("."))
        elif text.startswith("Line search failed"):
            steps, accepted = -1, False
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return steps, accepted


def run_tianshou(env_id: str, seed: int, steps: int, run_dir: Path, checkpoint_every: int = 100_000,
                 eval_episodes: int = 10, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train to `steps` env steps (continued from the run's checkpoint), then the final evaluation."""
    try:
        import tianshou
    except ImportError:
        raise ModuleNotFoundError(f"the tianshou peer needs tianshou: {install_hint('bench')}") from None
    import torch
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer
    from tianshou.env import VectorEnvNormObs
    from tianshou.highlevel.env import EnvFactoryRegistered, VectorEnvType
    from tianshou.utils.torch_utils import policy_within_training_step

    from trpo.peers import _step  # here, not at the top: trpo.peers imports this module

    torch.set_num_threads(1)  # one core per run, as trpo bench's own runs
    settings = tianshou_settings(env_id)
    max_epochs = epochs(settings, steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"env": env_id, "seed": seed, "total_steps": steps, "library": "tianshou",
              "version": tianshou.__version__, "algo": "TRPO", "example": EXAMPLE, **settings,
              "max_epochs": max_epochs, "vector_env": "dummy (one process)", "env_kwargs": env_kwargs or {}}
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    # The example's env factory and seeding (training envs seeded from `seed`), without envpool; its test envs
    # (one here: they are not used) are made after them, as there.
    factory = EnvFactoryRegistered(task=env_id, venv_type=VectorEnvType.DUMMY, envpool_factory=None,
                                   **(env_kwargs or {}))
    envs = factory.create_envs(settings["num_training_envs"], 1, seed=seed)
    envs.test_envs.close()
    train_envs = VectorEnvNormObs(envs.training_envs, update_obs_rms=settings["obs_norm"])
    np.random.seed(seed)
    torch.manual_seed(seed)
    algorithm = _agent(settings, envs.env, max_epochs)
    buffer = VectorReplayBuffer(settings["buffer_size"], settings["num_training_envs"])
    episodes = _Episodes(settings["num_training_envs"])
    collector: Collector[CollectStats] = Collector(algorithm, train_envs, buffer, exploration_noise=True,
                                                  on_step_hook=episodes)
    metrics, checkpoint = run_dir / "metrics.jsonl", run_dir / CHECKPOINT
    env_step = update = 0
    if checkpoint.is_file():  # continue: drop the rows logged after the checkpoint
        env_step, update = _restore(load(checkpoint), algorithm, train_envs.get_obs_rms())
        write_text_atomic(metrics, "".join(line + "\n" for line in metrics.read_text().splitlines()
                                           if _step(line) <= env_step))
    else:
        write_text_atomic(metrics, "")
    collector.reset(reset_buffer=False)
    while env_step < steps:
        with policy_within_training_step(algorithm.policy):  # the example's trainer's training step
            collected = collector.collect(n_step=settings["collection_step_num_env_steps"])
            lr = algorithm.lr_schedulers[0].get_last_lr()[0] if algorithm.lr_schedulers else settings["lr"]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                stats = algorithm.update(buffer=collector.buffer, batch_size=settings["batch_size"],
                                         repeat=settings["update_step_num_repetitions"])
            collector.reset_buffer(keep_statistics=True)
        backtracks, accepted = _line_search(caught)
        env_step += collected.n_collected_steps
        update += 1
        ended = episodes.take()
        row: dict[str, Any] = {"update": update, "step": env_step, "episodes": len(ended),
                               "fps": collected.collect_speed}
        if ended:
            row["episode_return_mean"] = float(np.mean([r for r, _ in ended]))
            row["episode_length_mean"] = float(np.mean([n for _, n in ended]))
        row.update(kl=stats.kl.mean, value_loss=stats.vf_loss.mean, step_size=stats.step_size.mean,
                   line_search_steps=backtracks, step_accepted=accepted, lr=lr)
        with open_text(metrics) as fh:
            fh.write(json.dumps(row) + "\n")
        if env_step // checkpoint_every > (env_step - collected.n_collected_steps) // checkpoint_every \
                or env_step >= steps:
            _save(checkpoint, algorithm, train_envs.get_obs_rms(), env_step, update)
    train_envs.close()
    return evaluate(algorithm.policy, train_envs.get_obs_rms(), env_id, seed + EVAL_SEED_OFFSET, eval_episodes,
                    env_step, run_dir, env_kwargs)


def evaluate(policy: Any, obs_rms: Any, env_id: str, seed: int, episodes: int, step: int, run_dir: Path,
             env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """eval.json, as the other peers': `episodes` episodes one after another in one env (its first reset seeded),
    the mean action (clipped and scaled as in training; the example's test episodes sample), observations
    normalised with the training's statistics, frozen."""
    import gymnasium as gym
    import torch

    env = gym.make(env_id, **(env_kwargs or {}))
    policy.deterministic_eval = True
    returns: list[float] = []
    lengths: list[int] = []
    action_shape = env.action_space.shape
    assert action_shape is not None  # a Box: MuJoCo's actions
    obs, _ = env.reset(seed=seed)
    with torch.no_grad():
        while len(returns) < episodes:
            total, length, done = 0.0, 0, False
            while not done:
                action = np.reshape(policy.compute_action(obs_rms.norm(obs)), action_shape)
                obs, reward, terminated, truncated, _ = env.step(action)
                total, length, done = total + float(reward), length + 1, terminated or truncated
            returns.append(total)
            lengths.append(length)
            obs, _ = env.reset()
    env.close()
    result = {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)), "episodes": episodes,
              "mean_length": float(np.mean(lengths)), "returns": returns, "lengths": lengths, "step": int(step)}
    write_text_atomic(run_dir / "eval.json", json.dumps(result))
    return result
