"""Running statistics for observation normalization and reward scaling (saved inside checkpoints).

Imports nothing of trpo and takes no config (enabled, clip, gamma come as arguments): no envs, no randomness, no
disk; `state_dict`/`load_state_dict` hand the statistics to whoever writes or reads the checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import torch


class RunningMeanStd:
    """Mean and variance over all samples seen, merged batch by batch (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        b_count = batch.shape[0]
        # batch.mean(0) and batch.var(0), bit for bit, without their Python wrappers: reward scaling updates
        # these statistics at every time step of a batch.
        b_mean = np.add.reduce(batch, axis=0) / b_count
        dev = batch - b_mean
        b_var = np.add.reduce(dev * dev, axis=0) / b_count
        delta = b_mean - self.mean
        total = self.count + b_count
        # np.asarray: with shape () numpy's arithmetic returns scalars, and the statistics must stay arrays
        # whatever their shape (state_dict, copies and in-place use all expect one).
        self.mean = np.asarray(self.mean + delta * b_count / total)
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = np.asarray(m2 / total)
        self.count = float(total)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "var": torch.from_numpy(self.var.copy()),
            "count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mean, var = state["mean"].numpy().astype(np.float64), state["var"].numpy().astype(np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(f"running statistics of shape {tuple(mean.shape)} do not fit shape {self.mean.shape}")
        self.mean, self.var, self.count = mean, var, float(state["count"])


class ObsNormalizer:
    """(obs - mean) / sqrt(var + eps), clipped; a no-op when disabled. The last `passthrough` columns (an action
    mask) are left as they are."""

    def __init__(self, dim: int, enabled: bool, clip: float, passthrough: int = 0) -> None:
        self.enabled = enabled
        self.clip = clip
        self.passthrough = passthrough
        self.stats = RunningMeanStd((dim,))

    def update(self, obs: np.ndarray) -> None:
        """Merge a batch [B, dim] of raw encoded observations into the statistics (no-op when disabled)."""
        if self.enabled:
            self.stats.update(obs)

    def frozen(self) -> FrozenObsNorm:
        """The normalization with the current statistics, fixed: what pi_old sees during one batch."""
        if not self.enabled:
            return FrozenObsNorm(None, None, self.clip)
        return _freeze(self.stats, self.clip, self.passthrough)

    def running(self) -> RunningObsNorm:
        """obs_norm_update 'step': a copy of the statistics that merges each step's observations before normalizing
        them (the acting policy's, for one batch)."""
        return RunningObsNorm(copy.deepcopy(self.stats), self.clip, self.passthrough)

    def replay(self, raw_obs: np.ndarray) -> tuple[np.ndarray, list[FrozenObsNorm]]:
        """obs_norm_update 'step', in the learner: the batch's raw observations [T, N, D] merged step by step into
        these statistics exactly as the acting policy merged them (the same float64 operations on the same rows),
        so the normalized observations [T, N, D] returned are those the policy acted on, and the statistics end
        where the acting policy's copy ended. Also each step's normalization, for that step's next observations."""
        running = RunningObsNorm(self.stats, self.clip, self.passthrough)  # updates self.stats in place
        steps = [running.step(raw_obs[t]) for t in range(raw_obs.shape[0])]
        return np.stack([obs for obs, _ in steps]), [norm for _, norm in steps]


def _freeze(stats: RunningMeanStd, clip: float, passthrough: int) -> FrozenObsNorm:
    mean = stats.mean.astype(np.float32)
    inv_std = (1.0 / np.sqrt(stats.var + 1e-8)).astype(np.float32)
    if passthrough:  # 0/1 mask columns: mean 0, scale 1 (a clip below 1 keeps them > 0, which is enough)
        mean[-passthrough:], inv_std[-passthrough:] = 0.0, 1.0
    return FrozenObsNorm(mean, inv_std, clip)


class RunningObsNorm:
    """Statistics that move at every step (obs_norm_update 'step', as SB3's VecNormalize): each call merges the
    observations of one step of all envs [N, D] into them, then normalizes those observations with the result.
    Picklable; the acting policy carries a copy through a batch and the learner replays it (`ObsNormalizer.replay`)."""

    def __init__(self, stats: RunningMeanStd, clip: float, passthrough: int) -> None:
        self.stats, self.clip, self.passthrough = stats, clip, passthrough

    def step(self, obs: np.ndarray) -> tuple[np.ndarray, FrozenObsNorm]:
        self.stats.update(obs)
        norm = _freeze(self.stats, self.clip, self.passthrough)
        return norm(obs), norm

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.step(obs)[0]


class FrozenObsNorm:
    """(obs - mean) * inv_std, clipped, in float32; the identity when mean is None. Picklable."""

    def __init__(self, mean: np.ndarray | None, inv_std: np.ndarray | None, clip: float) -> None:
        self.mean, self.inv_std, self.clip = mean, inv_std, np.float32(clip)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return obs
        # minimum/maximum: np.clip's values at a fraction of its call overhead (this runs at every env step).
        out: np.ndarray = np.minimum(np.maximum((obs - self.mean) * self.inv_std, -self.clip), self.clip)
        return out


class RewardScaler:
    """Divides rewards by the running std of the discounted return (as VecNormalize does); no-op if disabled."""

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards.astype(np.float32)
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        scaled = self.scale(rewards)
        self.returns[dones] = 0.0
        return scaled

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """Rewards of any shape scaled and clipped with the current statistics, which stay as they are (vine
        branches' rewards)."""
        if not self.enabled:
            return rewards.astype(np.float32)
        scaled = np.minimum(np.maximum(rewards / np.sqrt(self.stats.var + 1e-8), -self.clip), self.clip)
        return scaled.astype(np.float32)


ObsNorm = FrozenObsNorm | RunningObsNorm  # what an acting policy normalizes its observations with
