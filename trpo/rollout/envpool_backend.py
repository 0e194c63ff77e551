"""vector_mode 'envpool': the envs in one envpool pool (pip install 'trpo[envpool]'), stepped with one call for all of
them on envpool's own C++ threads (`num_workers` of them; 0: one per env, at most one per core).

The batch is the same as the other modes make: an ended episode's true final observation is recorded before the
env is reset (envpool's own autoreset would spend the next step on the reset: each ended env is reset at once
instead, by its index), terminations and time-limit truncations stay apart, observations are checked and encoded as
everywhere. Runs are deterministic for a seed (envpool seeds env i with seed + i), but they are not the runs the
other modes give: the envs are envpool's implementations of the ids, not Gymnasium's. Its MuJoCo tasks run on
envpool's own MuJoCo build, its Atari ids with its own preprocessing (envpool's defaults, not trpo's
AtariPreprocessing), so returns can differ from Gymnasium's envs of the same id; evaluation (`trpo eval`, the
final and periodic evaluations) still runs Gymnasium's env of the id. Env ids only (no factories, instances,
env_kwargs or wrappers; max_episode_steps is passed on), no vine sampling (envpool cannot save an env's state).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from trpo.config import TRPOConfig
from trpo.distributions import ActionDistribution
from trpo.envs import EnvError, EnvMaker, EnvSpec, check_masks
from trpo.extras import install_hint
from trpo.observations import MAX_REWARD, ObsEncoder
from trpo.policy import Acting
from trpo.rollout.runner import BatchNoise, InProcess, Segment
from trpo.rollout.workers import worker_count
from trpo.vine import VinePlan


def envpool_backend(spec: EnvSpec, cfg: TRPOConfig, encoder: ObsEncoder, dist: ActionDistribution) -> EnvpoolRunner:
    """vector_mode 'envpool': every env in one envpool pool in this process."""
    try:
        import envpool
    except ImportError:
        raise EnvError(f"vector_mode 'envpool' needs envpool: {install_hint('envpool')}") from None
    env_id, max_steps = _task(spec)
    task = env_id.removeprefix("ALE/")  # envpool names Atari games without the namespace
    if task not in envpool.list_all_envs():
        raise EnvError(f"envpool has no env {task!r} (vector_mode 'envpool'); use another vector_mode")
    if cfg.sampling == "vine":
        raise EnvError("vine sampling restores env states, which envpool cannot save: use another vector_mode")
    options: dict[str, Any] = {"max_episode_steps": max_steps} if max_steps is not None else {}
    threads = worker_count(cfg)

    def make(seed: int) -> Any:
        with warnings.catch_warnings():  # envpool's Box bounds are float64: Gymnasium warns when it casts them
            warnings.simplefilter("ignore", UserWarning)
            pool = envpool.make(task, env_type="gymnasium", num_envs=cfg.num_envs, seed=seed, num_threads=threads,
                                **options)
            pool.observation_space, pool.action_space  # noqa: B018 (made and cached here, where the warning is off)
            return pool

    return EnvpoolRunner(make, env_id, cfg.num_envs, encoder, dist)


def _task(spec: EnvSpec) -> tuple[str, int | None]:
    """The env id, and a max_episode_steps to pass on; EnvError for what envpool cannot make."""
    if isinstance(spec, EnvMaker) and isinstance(spec.base, str) and not spec.kwargs and not spec.wrappers:
        return spec.base, spec.max_episode_steps
    if isinstance(spec, str):
        if ":" in spec:
            raise EnvError(f"vector_mode 'envpool' makes envpool's own envs by id; {spec!r} names a module's env")
        return spec, None
    raise EnvError("vector_mode 'envpool' makes its envs from an env id, without env_kwargs or env_wrappers (those "
                   "are Gymnasium's); use another vector_mode")


class EnvpoolRunner(InProcess):
    """k envs in one envpool pool, stepped a whole segment at a time (a `Backend`, like `EnvRunner`)."""

    restarts = 0

    def __init__(self, make: Any, env_id: str, num_envs: int, encoder: ObsEncoder,
                 dist: ActionDistribution) -> None:
        self.make = make
        self.env_id = env_id
        self.pool: Any = None  # made at reset(), with its seed
        self.k = num_envs
        self.encoder = encoder
        self.dist = dist
        self.obs = np.zeros((num_envs, encoder.dim), dtype=encoder.dtype)
        self.ep_return = np.zeros(num_envs)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)
        self.starts = np.ones(num_envs, bool)
        self.state: Any = None

    def _encode(self, raw: Any, what: str) -> np.ndarray:
        try:
            encoded = self.encoder(raw)
        except Exception as exc:
            raise EnvError(f"envpool's {self.env_id} returned an observation ({what}) that does not fit the "
                           f"observation space of Gymnasium's {self.env_id}: {exc}") from exc
        if not np.isfinite(encoded).all():
            raise EnvError(f"envpool's {self.env_id} returned a non-finite {what} (NaN or inf)")
        return encoded

    def reset(self, seed: int) -> np.ndarray:
        if self.pool is not None:
            self.pool.close()
        self.pool = self.make(seed % 2**32)
        raw, info = self.pool.reset()
        self.obs[info["env_id"]] = self._encode(raw, "observation")
        check_masks(self.encoder, self.obs, 0)
        return self._all_restarted()

    def run(self, acting: Acting, noise: BatchNoise, plan: VinePlan | None = None) -> Segment:
        assert plan is None, "vine sampling is refused when the backend is made"
        steps, k = noise.shape[0], self.k
        if self.state is None:
            self.state = acting.initial_state(k)
        seg = Segment.empty(steps, k, self.encoder, self.state)
        actions = []
        for t in range(steps):
            seg.record(t, self.obs, self.starts, self.state)
            action, self.state = acting.act(self.obs, self.state, self.starts, noise[t])
            actions.append(action)
            raw, reward, terminated, truncated, info = self.pool.step(np.asarray(self.dist.to_env(action)))
            order = np.argsort(info["env_id"])  # rows by env index, whatever order the pool answered in
            raw, terminated, truncated = raw[order], terminated[order], truncated[order]
            reward = np.asarray(reward, dtype=np.float64)[order]
            if not (np.abs(reward) <= MAX_REWARD).all():
                raise EnvError(f"envpool's {self.env_id} returned a reward that is not a finite float32: "
                               f"{reward[~(np.abs(reward) <= MAX_REWARD)][0]}")
            seg.next_obs[t] = self._encode(raw, "observation")
            seg.rewards[t], seg.terminated[t], seg.truncated[t] = reward, terminated, truncated
            self.ep_return += reward
            self.ep_length += 1
            ended = np.flatnonzero(np.logical_or(terminated, truncated))
            self.obs[:] = seg.next_obs[t]
            self.starts[:] = False
            if ended.size:  # the final observations are recorded: now the ended envs start anew
                self.starts[ended] = True
                seg.episode_returns += self.ep_return[ended].tolist()
                seg.episode_lengths += self.ep_length[ended].tolist()
                self.ep_return[ended], self.ep_length[ended] = 0.0, 0
                first, info = self.pool.reset(ended.astype(np.int32))
                self.obs[info["env_id"]] = self._encode(first, "observation")
            check_masks(self.encoder, self.obs, 0)
        seg.actions = np.stack(actions)
        return seg

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
