"""Environments and rollouts: N vectorized Gymnasium envs stepped by the current policy into a typed batch.

`terminated` and `truncated` are kept apart. At every step where an episode ends, the batch stores the *true*
final observation as `next_obs` (the env is reset only after it is recorded), so a time-limit truncation can
bootstrap from V(final obs) while a termination does not.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from trpo.checkpoint import interrupts_deferred
from trpo.networks import Actor, RolloutPolicy
from trpo.normalization import FrozenObsNorm, ObsNormalizer, RewardScaler
from trpo.spaces import MAX_REWARD, ActionDistribution, ObsEncoder, ObservationError, env_reward
from trpo.vine import Branches, StateAccess, VineBatch, VinePlan, VineSettings, draw_plan, run_branches

EnvSpec = str | Callable[[], gym.Env] | gym.Env


class EnvError(ValueError):
    """The environment cannot be made or returned invalid data; the message says which."""


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


def make_env(spec: EnvSpec) -> gym.Env:
    """One env from an id (also 'module:EnvId'), a factory, or an existing instance."""
    if isinstance(spec, gym.Env):
        return spec
    if callable(spec):
        try:
            env = spec()
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
        return gym.make(spec)
    except EnvError:  # a missing game package, said as it is
        raise
    except gym.error.UnregisteredEnv as exc:
        raise EnvError(f"unknown environment id {spec!r}: {exc}") from exc
    except (gym.error.Error, ModuleNotFoundError) as exc:  # e.g. DependencyNotInstalled: mujoco is missing
        raise EnvError(f"cannot make environment {spec!r}: {exc}") from exc
    except Exception as exc:  # the env's own constructor, or the module that registers it, failed
        raise EnvError(f"cannot make environment {spec!r}: {type(exc).__name__}: {exc}") from exc


def make_atari(env_id: str) -> gym.Env:
    """An 'ALE/Name-v5' game with the standard preprocessing (Machado et al. 2018 via Gymnasium's wrappers):
    up to 30 no-op starts, 4 frames per action (max of the last two), 84 x 84 greyscale, 4 frames stacked
    (obs 4 x 84 x 84 uint8); sticky actions as the v5 games define them (per frame, probability 0.25), drawn by
    Gymnasium's StickyAction wrapper from the env's RNG rather than inside ALE, whose saved states do not carry
    the last action (vine sampling restores states); episodes end at game over."""
    try:
        import ale_py
    except ImportError as exc:
        raise EnvError(f"{env_id} needs ale-py: pip install \"trpo[atari]\"") from exc
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
        raise EnvError("MinAtar games need minatar: pip install \"trpo[minatar]\"") from exc
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


def env_id_of(spec: EnvSpec) -> str | None:
    """The id to store in configs and checkpoints, when there is one."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, gym.Env) and spec.spec is not None:
        return spec.spec.id
    return None


@dataclass
class Segment:
    """What one runner collected for its k envs: plain numpy, so it crosses process boundaries cheaply.
    Observations are encoded but *not* normalized; rewards are raw."""

    obs: np.ndarray  # [T, k, D]
    next_obs: np.ndarray  # [T, k, D]: the true final observation where an episode ended
    actions: np.ndarray  # [T, k, ...] as sampled (Box actions unclipped)
    rewards: np.ndarray  # [T, k] float64
    terminated: np.ndarray  # [T, k] bool
    truncated: np.ndarray  # [T, k] bool
    episode_returns: list[float]
    episode_lengths: list[int]
    branches: Branches | None = None  # vine sampling's branches off this segment


def check_masks(encoder: ObsEncoder, obs: np.ndarray, first_index: int) -> None:
    """Every env about to act (rows of obs, env first_index onwards) has a valid action in each sub-action."""
    bad = encoder.empty_mask_row(obs)
    if bad is not None:
        raise EnvError(f"env {first_index + bad} gave an action_mask that allows no action")


class Backend(Protocol):
    """The rollout seam: how a batch's envs are stepped. `EnvRunner` (vector_mode 'sync', in this process),
    `WorkerPool` ('subprocess'), `ray_rollout.RayPool` ('ray'); each gives the same segments for the same policy
    and noise. Adding a backend: a class with these members and one branch in `RolloutCollector.__init__`."""

    restarts: int  # workers replaced after dying (Ray only; 0 elsewhere)

    def reset(self, seed: int) -> np.ndarray: ...

    def start(self, policy: RolloutPolicy, obs_norm: FrozenObsNorm, shifted_noise: np.ndarray,
              plan: VinePlan | None = None) -> None: ...

    def finish(self) -> list[Segment]: ...

    def drop(self) -> None: ...

    def close(self) -> None: ...


class EnvRunner:
    """Steps k envs for a whole segment with a frozen policy, autoresetting ended episodes. Lives in this
    process (vector_mode 'sync': a `Backend` that collects the batch when `finish` asks for it) or in a worker
    process ('subprocess'); both give the same results."""

    restarts = 0

    def __init__(self, envs: list[gym.Env], encoder: ObsEncoder, dist: ActionDistribution, first_index: int) -> None:
        self.envs = envs
        self.encoder = encoder
        self.dist = dist
        self.first_index = first_index  # global index of envs[0], for error messages and seeds
        self.obs = np.zeros((len(envs), encoder.dim), dtype=encoder.dtype)
        self.ep_return = np.zeros(len(envs))
        self.ep_length = np.zeros(len(envs), dtype=np.int64)
        self.access: list[StateAccess] | None = None  # made at the first vine batch
        self.pending: tuple[Any, ...] | None = None  # start()'s arguments, run by finish()

    def _check_finite(self, obs: np.ndarray, what: str) -> None:
        """One check for all k envs' encoded observations [k, D]; finds the env only when one is bad."""
        if not np.isfinite(obs).all():
            i = int(np.flatnonzero(~np.isfinite(obs).all(axis=1))[0])
            raise EnvError(f"environment returned a non-finite {what} (NaN or inf) in env {self.first_index + i}")

    def _check_masks(self) -> None:
        check_masks(self.encoder, self.obs, self.first_index)

    def reset(self, seed: int) -> np.ndarray:
        for i, env in enumerate(self.envs):
            try:
                # Seeds wrap at 2**32: some envs seed numpy's legacy RandomState, which takes no larger ones.
                self.obs[i] = self.encoder.one(*env.reset(seed=(seed + self.first_index + i) % 2**32))
            except Exception as exc:
                raise env_failure(exc, "reset()", self.first_index + i, env) from exc
        self._check_finite(self.obs, "observation")
        self._check_masks()
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        return self.obs.copy()

    def run(self, policy: RolloutPolicy, obs_norm: FrozenObsNorm, shifted_noise: np.ndarray,
            plan: VinePlan | None = None) -> Segment:
        """Step every env shifted_noise.shape[0] times. The action at step t is
        pick(policy(normalized obs) + shifted_noise[t]) (`ActionDistribution.shift` / `pick`), all in numpy.
        With a vine plan, the env states at the plan's steps are saved on the way, and the branches run after."""
        steps, k, d = shifted_noise.shape[0], len(self.envs), self.encoder.dim
        save_at = np.zeros((steps, k), bool)
        saved: list[list[tuple[Any, ...]]] = [[] for _ in range(k)]
        if plan is not None:
            if self.access is None:
                self.access = [StateAccess(env) for env in self.envs]
            for i in range(k):
                save_at[plan.times[i], i] = True
        seg = Segment(
            obs=np.zeros((steps, k, d), self.encoder.dtype), next_obs=np.zeros((steps, k, d), self.encoder.dtype),
            actions=np.empty(0), rewards=np.zeros((steps, k)), terminated=np.zeros((steps, k), bool),
            truncated=np.zeros((steps, k), bool), episode_returns=[], episode_lengths=[],
        )
        actions = []
        for t in range(steps):
            seg.obs[t] = self.obs
            for i in np.flatnonzero(save_at[t]):
                saved[i].append(self.access[i].save())
            action = self.dist.pick(policy(obs_norm(self.obs)) + shifted_noise[t])
            actions.append(action)
            env_actions = self.dist.to_env_list(action)
            ended = False
            for i, env in enumerate(self.envs):
                try:  # the user's env: whatever it raises, or returns that cannot be read, becomes an EnvError
                    raw, reward, terminated, truncated, info = env.step(env_actions[i])
                    reward = env_reward(reward)
                    seg.next_obs[t, i] = self.encoder.one(raw, info)
                except Exception as exc:
                    raise env_failure(exc, "step()", self.first_index + i, env) from exc
                if not abs(reward) <= MAX_REWARD:  # inlined check_reward's test: this is the hot loop
                    check_reward(reward, env, self.first_index + i, int(self.ep_length[i]) + 1)
                seg.rewards[t, i], seg.terminated[t, i], seg.truncated[t, i] = reward, terminated, truncated
                self.ep_return[i] += reward
                self.ep_length[i] += 1
                if terminated or truncated:
                    ended = True
                    seg.episode_returns.append(float(self.ep_return[i]))
                    seg.episode_lengths.append(int(self.ep_length[i]))
                    self.ep_return[i], self.ep_length[i] = 0.0, 0
                    try:
                        self.obs[i] = self.encoder.one(*env.reset())
                    except Exception as exc:
                        raise env_failure(exc, "reset()", self.first_index + i, env) from exc
                else:
                    self.obs[i] = seg.next_obs[t, i]
            if ended:
                done = seg.terminated[t] | seg.truncated[t]
                self._check_finite(np.where(done[:, None], seg.next_obs[t], 0.0), "final observation")
            self._check_finite(self.obs, "observation")
            self._check_masks()
        seg.actions = np.stack(actions)
        if plan is not None:
            start_obs = np.stack([seg.obs[plan.times[i], i] for i in range(k)])
            seg.branches = run_branches(self.envs, saved, self.access, start_obs, plan, self.encoder, self.dist,
                                        policy, obs_norm, self.first_index)
        return seg

    def start(self, policy: RolloutPolicy, obs_norm: FrozenObsNorm, shifted_noise: np.ndarray,
              plan: VinePlan | None = None) -> None:
        self.pending = (policy, obs_norm, shifted_noise, plan)

    def finish(self) -> list[Segment]:
        assert self.pending is not None, "finish() before start()"
        args, self.pending = self.pending, None
        return [self.run(*args)]

    def drop(self) -> None:
        self.pending = None

    def close(self) -> None:
        for i, env in enumerate(self.envs):
            close_env(env, self.first_index + i)


def _worker(conn: Connection, spec: EnvSpec, count: int, first_index: int, encoder: ObsEncoder,
            dist: ActionDistribution, inherited: list[Connection]) -> None:
    """A worker process: owns `count` envs and answers ('reset', seed), ('run', args) and ('close', None)."""
    # A forked worker holds copies of the main process's ends of the pipes made so far, its own included: close
    # them, or a main process that dies (SIGKILL, out of memory) would leave this worker waiting forever on a
    # pipe that never reports end-of-file.
    for end in inherited:
        end.close()
    # Ctrl-C reaches the whole process group: the main process handles it and closes this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handlers of the parent, forked with it
    torch.set_num_threads(1)
    runner: EnvRunner | None = None
    try:
        try:
            runner = EnvRunner([make_env(spec) for _ in range(count)], encoder, dist, first_index)
        except Exception as exc:  # making the envs failed: report it, then end
            _send_error(conn, exc)
            return
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                result = runner.reset(payload) if command == "reset" else runner.run(*payload)
            except Exception as exc:  # report to the main process, which raises it there
                _send_error(conn, exc)
            else:
                conn.send(("ok", result))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the main process went away (EOF, reset or broken pipe): end quietly, it reports what happened
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):  # the main process reports a close() that raises: its own env's
                runner.close()
        conn.close()


def worker_error(exc: Exception) -> Exception:
    """An exception raised in a worker, ready to send to the main process: with the worker's traceback as a note
    (shown by --debug), or as a RuntimeError carrying its text if it does not pickle."""
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note("in an env worker process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _send_error(conn: Connection, exc: Exception) -> None:
    conn.send(("error", worker_error(exc)))


class WorkerPool:
    """Envs split over worker processes (one per core at most); one message each way per batch, not per step."""

    restarts = 0

    def __init__(self, spec: EnvSpec, num_envs: int, encoder: ObsEncoder, dist: ActionDistribution,
                 workers: int) -> None:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        sizes = [len(part) for part in np.array_split(np.arange(num_envs), workers)]
        self.conns: list[Connection] = []
        self.procs = []
        first = 0
        forked = ctx.get_start_method() == "fork"
        self.froze_gc = forked
        if self.froze_gc:
            # As Python's gc docs advise before fork(): move every object alive now out of the collector's reach,
            # so that neither side's collections write to the pages they share (copy-on-write would duplicate
            # them; ~15 MiB less memory in all here). close() hands them back to the collector.
            gc.freeze()
        with interrupts_deferred():
            for size in sizes:
                parent, child = ctx.Pipe()
                inherited = [*self.conns, parent] if forked else []
                proc = ctx.Process(target=_worker, args=(child, spec, size, first, encoder, dist, inherited),
                                   daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
                first += size
        self.slices = np.cumsum([0, *sizes])

    def _died(self, k: int) -> EnvError:
        self.procs[k].join(timeout=1)
        return EnvError(f"env worker process {k} (envs {self.slices[k]}-{self.slices[k + 1] - 1}) died "
                        f"(exit code {self.procs[k].exitcode}); the latest checkpoint is intact")

    def _send(self, k: int, message: tuple[str, Any]) -> None:
        try:
            self.conns[k].send(message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self._died(k) from exc

    def _gather(self) -> list[Any]:
        results = []
        for k, conn in enumerate(self.conns):
            try:
                results.append(conn.recv())
            except (EOFError, ConnectionResetError) as exc:
                raise self._died(k) from exc
        for status, value in results:
            if status == "error":
                raise value
        return [value for _, value in results]

    def reset(self, seed: int) -> np.ndarray:
        for k in range(len(self.conns)):
            self._send(k, ("reset", seed))
        return np.concatenate(self._gather())

    def start(self, policy: RolloutPolicy, obs_norm: FrozenObsNorm, shifted_noise: np.ndarray,
              plan: VinePlan | None = None) -> None:
        """Set every worker collecting its envs' share of the batch; returns at once (see `finish`)."""
        for k, (lo, hi) in enumerate(itertools.pairwise(self.slices)):
            share = None if plan is None else plan.envs(lo, hi)
            self._send(k, ("run", (policy, obs_norm, shifted_noise[:, lo:hi], share)))

    def finish(self) -> list[Segment]:
        """Wait for the segments of the batch that `start` set going."""
        return self._gather()

    def drop(self) -> None:
        """Read the batch in flight and forget it."""
        self._gather()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):  # a worker that already died
                conn.send(("close", None))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        if self.froze_gc:
            gc.unfreeze()  # so that objects frozen at start can be collected once garbage
            self.froze_gc = False


@dataclass
class Batch:
    """T steps x N envs, time-major. Observations are encoded and normalized as the policy saw them."""

    obs: Tensor  # [T, N, D]
    next_obs: Tensor  # [T, N, D]: s_{t+1}, the true final observation where the episode ended
    actions: Tensor  # [T, N, ...]
    log_probs: Tensor  # [T, N]: log pi_old(a_t | s_t)
    rewards: Tensor  # [T, N]: after reward scaling
    terminated: Tensor  # [T, N] bool
    truncated: Tensor  # [T, N] bool
    episode_returns: list[float] = field(default_factory=list)  # raw returns of episodes ending in the batch
    episode_lengths: list[int] = field(default_factory=list)
    worker_restarts: int = 0  # Ray actors replaced while collecting this batch (their share collected again)
    vine: VineBatch | None = None  # vine sampling's branches (the policy learns from these)

    @property
    def env_steps(self) -> int:
        """Env steps taken for this batch: the trajectories' and the vine branches'."""
        return self.obs.shape[0] * self.obs.shape[1] + (0 if self.vine is None else self.vine.env_steps)


@dataclass
class _Pending:
    """A batch set going by `RolloutCollector.start`: pi_old as the envs see it, and the actor it came from."""

    policy: RolloutPolicy
    obs_norm: FrozenObsNorm
    shifted_noise: np.ndarray  # [T, N, head_dim]
    generator: torch.Generator
    theta: Tensor  # the actor's parameters at start()
    plan: VinePlan | None


def _flat_params(actor: Actor) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in actor.parameters()])


class RolloutCollector:
    """Collects batches from `num_envs` envs, in this process, in worker processes or on Ray actors.

    pi_old is frozen for the whole batch: the actor's weights *and* the observation-normalization statistics,
    which are updated with the batch's observations only after it is collected. Rewards are scaled afterwards,
    in time order, so the result does not depend on how envs are split over processes.
    """

    def __init__(self, spec: EnvSpec, num_envs: int, mode: str, encoder: ObsEncoder, dist: ActionDistribution,
                 obs_norm: ObsNormalizer, reward_scaler: RewardScaler, device: torch.device, seed: int,
                 num_workers: int = 0, ray_address: str | None = None, max_worker_restarts: int = 3,
                 vine: VineSettings | None = None) -> None:
        self.vine = vine
        self.encoder = encoder
        self.dist = dist
        self.obs_norm = obs_norm
        self.reward_scaler = reward_scaler
        self.device = device
        self.num_envs = num_envs
        self.runner: Backend
        if mode in ("subprocess", "ray"):
            if isinstance(spec, gym.Env):
                raise EnvError(f"an env instance cannot be sent to {mode} workers; pass an id or a factory")
            if mode == "subprocess" and mp.current_process().daemon:
                raise EnvError("vector_mode 'subprocess' cannot start env workers inside a daemonic process "
                               "(e.g. a multiprocessing.Pool worker); use vector_mode 'sync' there")
            close_env(make_env(spec))  # fail early, in this process, with a clear message
            workers = num_workers or min(num_envs, os.cpu_count() or 1)
            if mode == "ray":
                from trpo.ray_rollout import RayPool  # Ray is an optional extra

                self.runner = RayPool(spec, num_envs, encoder, dist, workers, ray_address, max_worker_restarts)
            else:
                self.runner = WorkerPool(spec, num_envs, encoder, dist, workers)
        else:
            if isinstance(spec, gym.Env) and num_envs != 1:
                raise EnvError("an env instance serves only num_envs=1; pass an id or a factory")
            self.runner = EnvRunner([make_env(spec) for _ in range(num_envs)], encoder, dist, 0)
        try:
            obs_norm.update(self.runner.reset(seed))
        except BaseException:
            self.runner.close()  # worker processes, Ray actors and a Ray runtime started for them
            raise
        self._pending: _Pending | None = None

    @torch.no_grad()
    def start(self, actor: Actor, steps: int, generator: torch.Generator) -> None:
        """Freeze pi_old (a numpy copy of the actor and the observation statistics), draw the noise of the whole
        batch from `generator`, and set the envs going. With worker processes this returns at once, so the
        caller can fit the critic while the batch is collected (the batch does not depend on the critic)."""
        if self._pending is not None:
            raise RuntimeError("a batch is already being collected; call finish() first")
        policy = actor.rollout_policy()
        noise = self.dist.noise((steps, self.num_envs, self.dist.head_dim), generator)
        # No family's shift depends on the state (a Gaussian's log-std is a free parameter): any input will do.
        params = tuple(p.cpu() for p in actor(torch.zeros(1, self.encoder.dim, device=self.device)))
        shifted = self.dist.shift(params, noise).numpy()
        plan = None if self.vine is None else draw_plan(self.dist, params, self.num_envs, steps, self.vine, generator)
        frozen = self.obs_norm.frozen()
        self.runner.start(policy, frozen, shifted, plan)
        self._pending = _Pending(policy, frozen, shifted, generator, _flat_params(actor), plan)

    @property
    def collecting(self) -> bool:
        """Whether `start` set a batch going that `finish` has not yet returned."""
        return self._pending is not None

    @torch.no_grad()
    def finish(self, actor: Actor) -> Batch:
        """The batch that `start` set going, with log pi_old(a|s) computed in one batched pass of `actor`, which
        must still be pi_old: if its parameters changed since `start`, that batch is dropped and a new one
        collected."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("no batch is being collected; call start() first")
        steps, n, d = pending.shifted_noise.shape[0], self.num_envs, self.encoder.dim
        if not torch.equal(pending.theta, _flat_params(actor)):
            self.runner.drop()  # set going with another policy
            return self.collect(actor, steps, pending.generator)
        restarts = self.runner.restarts
        parts = self.runner.finish()
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts], axis=1)  # noqa: E731
        raw_obs, raw_next = cat("obs"), cat("next_obs")
        terminated, truncated, rewards = cat("terminated"), cat("truncated"), cat("rewards")

        frozen = pending.obs_norm
        obs = torch.as_tensor(frozen(raw_obs), device=self.device)
        next_obs = torch.as_tensor(frozen(raw_next), device=self.device)
        # Every observation the envs returned from a step, final ones included.
        self.obs_norm.update(raw_next.reshape(-1, d))
        scaled = np.stack([self.reward_scaler(rewards[t], terminated[t] | truncated[t]) for t in range(steps)])
        actions = torch.as_tensor(cat("actions"), device=self.device)
        flat_actions = actions.reshape(steps * n, *actions.shape[2:])
        log_probs = self.dist.log_prob(actor(obs.reshape(steps * n, d)), flat_actions)
        # Episodes grouped by runner (worker), in time order within each.
        return Batch(
            obs=obs,
            next_obs=next_obs,
            actions=actions,
            log_probs=log_probs.reshape(steps, n),
            rewards=torch.as_tensor(scaled, device=self.device),
            terminated=torch.as_tensor(terminated, device=self.device),
            truncated=torch.as_tensor(truncated, device=self.device),
            episode_returns=[r for p in parts for r in p.episode_returns],
            episode_lengths=[n_ for p in parts for n_ in p.episode_lengths],
            worker_restarts=self.runner.restarts - restarts,
            vine=None if pending.plan is None else self._vine_batch(actor, pending, raw_obs, parts),
        )

    def _vine_batch(self, actor: Actor, pending: _Pending, raw_obs: np.ndarray, parts: list[Segment]) -> VineBatch:
        """The branches as tensors: rollout states and final observations normalized with pi_old's statistics,
        rewards scaled with the statistics the trunk's rewards left (the branches do not update either)."""
        plan, frozen = pending.plan, pending.obs_norm
        assert plan is not None
        br = Branches.concat([p.branches for p in parts if p.branches is not None])
        n, m, k = br.steps.shape
        states = np.concatenate([raw_obs[plan.times[i], i] for i in range(n)])  # [N * M, D], env-major
        obs = torch.as_tensor(frozen(states), device=self.device)
        actions = torch.as_tensor(br.actions.reshape(n * m * k, *br.actions.shape[3:]), device=self.device)
        log_probs = self.dist.log_prob(actor(obs.repeat_interleave(k, 0)), actions)
        as_tensor = lambda a: torch.as_tensor(a.reshape(n * m, *a.shape[2:]), device=self.device)  # noqa: E731
        return VineBatch(
            obs=obs,
            actions=actions.reshape(n * m, k, *actions.shape[1:]),
            old_log_probs=log_probs.reshape(n * m, k),
            rewards=as_tensor(self.reward_scaler.scale(br.rewards)),
            steps=as_tensor(br.steps),
            terminated=as_tensor(br.terminated),
            last_obs=as_tensor(frozen(br.last_obs)),
            all_actions=plan.first is None,
        )

    def collect(self, actor: Actor, steps: int, generator: torch.Generator) -> Batch:
        """`steps` steps of every env with pi_old = the actor as it is now: `start` then `finish`."""
        self.start(actor, steps, generator)
        return self.finish(actor)

    def close(self) -> None:
        if self._pending is not None:
            # Read the batch in flight: a worker blocked writing it to a full pipe would never see "close".
            with contextlib.suppress(Exception):
                self.runner.drop()
        self._pending = None
        self.runner.close()
