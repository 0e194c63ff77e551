"""Small environments for the tests, registered on import (so `--env trpo_testenvs:Name-v0` works)."""

from __future__ import annotations

import os
import signal
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CounterEnv(gym.Env):
    """Observation = [t] (the step count). Terminates at `terminate_at` if set; otherwise TimeLimit truncates.
    Reward 1 per step. Lets tests tell a final observation from a reset observation."""

    def __init__(self, terminate_at: int | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


class SpacesEnv(gym.Env):
    """Any observation and action space; reward favours actions equal to their lowest value."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, horizon: int = 20) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.horizon = horizon
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None:  # autoresets pass None: the observations go on from the seeded stream
            self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        assert self.action_space.contains(action), f"invalid action {action!r} for {self.action_space}"
        self.t += 1
        reward = -float(np.sum(np.asarray(action, dtype=np.float64)))
        return self.observation_space.sample(), reward, False, self.t >= self.horizon, {}


class FaultyEnv(gym.Env):
    """A user's env with a bug, after `after` steps: NaN in the observation ("obs") or the reward ("reward"), a
    reward float32 cannot hold ("huge_reward": 1e300), an exception in __init__ ("init"), step() ("step") or close()
    ("close", from the start), an observation of the wrong shape ("shape": 3 entries; "reshape": the 2 entries as
    2 x 1)."""

    def __init__(self, fault: str, after: int = 5) -> None:
        if fault == "init":
            raise RuntimeError("the simulator failed to start")
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.fault, self.after, self.t = fault, after, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 1) if self.fault == "reshape" and self.after < 0 else 2, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        bad = self.t > self.after
        if bad and self.fault == "step":
            raise RuntimeError("the simulator diverged")
        obs = np.full(3 if bad and self.fault == "shape" else 2, np.nan if bad and self.fault == "obs" else 0.0,
                      np.float32)
        if bad and self.fault == "reshape":
            obs = obs.reshape(2, 1)
        reward = {"reward": float("nan"), "huge_reward": 1e300}.get(self.fault, 0.0) if bad else 0.0
        return obs, reward, False, self.t >= 50, {}

    def close(self) -> None:
        if self.fault == "close":
            raise RuntimeError("the simulator would not shut down")


class OutOfRangeEnv(gym.Env):
    """A Discrete(4) observation that goes out of range: -1 after `after` steps."""

    def __init__(self, after: int = 3) -> None:
        self.observation_space = spaces.Discrete(4)
        self.action_space = spaces.Discrete(2)
        self.after, self.t = after, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action: Any) -> tuple[int, float, bool, bool, dict]:
        self.t += 1
        return (-1 if self.t > self.after else self.t % 4), 0.0, False, self.t >= 20, {}


class DiesEnv(gym.Env):
    """Kills its own process (SIGKILL) at any step taken while the file `flag` exists: a worker that keeps
    dying, wherever it is restarted. Otherwise a trivial env whose episodes last 20 steps."""

    def __init__(self, flag: str) -> None:
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.flag, self.t = flag, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if os.path.exists(self.flag):
            os.kill(os.getpid(), signal.SIGKILL)
        self.t += 1
        return np.zeros(2, np.float32), float(action), False, self.t >= 20, {}


class MaskedChoiceEnv(gym.Env):
    """Each step shows one of `states` situations (one-hot); in each only some actions are valid (a fixed random
    table, 2 or more per sub-action) and one of those pays 1. An invalid action raises. The mask comes in
    info["action_mask"], or with in_obs=True in a Dict observation; nvec of length > 1 gives MultiDiscrete
    actions (a mask and a reward per sub-action). At step `empty_at` the mask allows nothing in sub-action 0."""

    def __init__(self, nvec: tuple[int, ...] = (6,), states: int = 4, in_obs: bool = False, horizon: int = 20,
                 empty_at: int | None = None) -> None:
        self.nvec, self.states, self.in_obs, self.horizon, self.empty_at = nvec, states, in_obs, horizon, empty_at
        self.action_space = spaces.Discrete(nvec[0]) if len(nvec) == 1 else spaces.MultiDiscrete(list(nvec))
        one_hot = spaces.Box(0, 1, (states,), np.float32)
        self.observation_space = (spaces.Dict({"obs": one_hot, "action_mask": spaces.MultiBinary(sum(nvec))})
                                  if in_obs else one_hot)
        table = np.random.default_rng(123)
        self.valid = [[np.sort(table.choice(n, table.integers(2, n), replace=False)) for n in nvec]
                      for _ in range(states)]
        self.best = [[int(table.choice(v)) for v in row] for row in self.valid]
        self.s, self.t = 0, 0

    def mask(self) -> np.ndarray:
        parts = [np.isin(np.arange(n), v).astype(np.int8) for n, v in zip(self.nvec, self.valid[self.s], strict=True)]
        if self.t == self.empty_at:
            parts[0][:] = 0
        return np.concatenate(parts)

    def _out(self) -> tuple[Any, dict]:
        obs = np.eye(self.states, dtype=np.float32)[self.s]
        mask = self.mask()
        return ({"obs": obs, "action_mask": mask}, {}) if self.in_obs else (obs, {"action_mask": mask})

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.s, self.t = int(self.np_random.integers(self.states)), 0
        return self._out()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        picks = np.atleast_1d(np.asarray(action))
        for i, (a, valid) in enumerate(zip(picks, self.valid[self.s], strict=True)):
            if a not in valid:
                raise ValueError(f"invalid action {int(a)} for sub-action {i} in state {self.s}")
        reward = float(np.mean([a == b for a, b in zip(picks, self.best[self.s], strict=True)]))
        self.s, self.t = int(self.np_random.integers(self.states)), self.t + 1
        return (*self._out()[:1], reward, False, self.t >= self.horizon, self._out()[1])

    def save_state(self) -> tuple[int, int]:  # vine sampling's protocol
        return self.s, self.t

    def restore_state(self, state: tuple[int, int]) -> None:
        self.s, self.t = state


class LayeredMDP(gym.Env):
    """A small MDP whose Q values are known exactly: `layers` steps per episode, `nodes` nodes per layer (one-hot
    observation of (layer, node)), `actions` actions. From node j of layer l, action a pays R[l, j, a] and leads
    to node j' of the next layer with probability P[l, j, a, j'] (drawn from the env's RNG); the episode
    terminates after the last layer. With action_free_moves, P does not depend on a (only the reward does).
    Implements vine sampling's save_state/restore_state."""

    def __init__(self, layers: int = 4, nodes: int = 2, actions: int = 3, action_free_moves: bool = False) -> None:
        self.layers, self.nodes = layers, nodes
        self.observation_space = spaces.Box(0, 1, (layers * nodes,), np.float32)
        self.action_space = spaces.Discrete(actions)
        table = np.random.default_rng(7)
        self.R = table.uniform(-1, 1, (layers, nodes, actions))
        p = table.dirichlet(np.ones(nodes), (layers, nodes, 1 if action_free_moves else actions))
        self.P = np.broadcast_to(p, (layers, nodes, actions, nodes)).copy()
        self.layer, self.node = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.layers * self.nodes, np.float32)
        obs[min(self.layer, self.layers - 1) * self.nodes + self.node] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.layer, self.node = 0, int(self.np_random.integers(self.nodes))
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(action)
        reward = float(self.R[self.layer, self.node, a])
        # one uniform draw whatever the action: the inverse CDF makes branches with common random numbers agree
        self.node = int(np.searchsorted(np.cumsum(self.P[self.layer, self.node, a]), self.np_random.uniform()))
        self.node = min(self.node, self.nodes - 1)
        self.layer += 1
        return self._obs(), reward, self.layer >= self.layers, False, {}

    def exact_q(self, probs: np.ndarray, gamma: float) -> np.ndarray:
        """Q^pi[l, j, a] by backward induction, pi given as probs[l, j, a]."""
        q = np.zeros_like(self.R)
        v_next = np.zeros(self.nodes)
        for layer in reversed(range(self.layers)):
            q[layer] = self.R[layer] + gamma * self.P[layer] @ v_next
            v_next = (probs[layer] * q[layer]).sum(-1)
        return q

    def save_state(self) -> tuple[int, int]:
        return self.layer, self.node

    def restore_state(self, state: tuple[int, int]) -> None:
        self.layer, self.node = state


class PixelSideEnv(gym.Env):
    """An image (size x size x 2 uint8, channels last) with one lit column, in one channel; the action must say
    whether it is in the left (0) or right (1) half: reward 1 if so. 10 steps per episode; random scores 5."""

    def __init__(self, size: int = 12, channels_last: bool = True) -> None:
        self.size, self.channels_last = size, channels_last
        shape = (size, size, 2) if channels_last else (2, size, size)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.action_space = spaces.Discrete(2)
        self.col, self.t = 0, 0

    def _obs(self) -> np.ndarray:
        img = np.zeros((2, self.size, self.size), np.uint8)
        self.col = int(self.np_random.integers(self.size))
        img[int(self.np_random.integers(2)), :, self.col] = 255
        return img.transpose(1, 2, 0).copy() if self.channels_last else img

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == int(self.col >= self.size // 2))
        self.t += 1
        return self._obs(), reward, False, self.t >= 10, {}


def _register() -> None:
    registry = gym.envs.registration.registry
    entries: dict[str, dict[str, Any]] = {
        "Counter-v0": dict(entry_point=CounterEnv, max_episode_steps=7),
        "TextObs-v0": dict(entry_point=lambda: SpacesEnv(spaces.Text(5), spaces.Discrete(2))),
        "TupleAction-v0": dict(
            entry_point=lambda: SpacesEnv(spaces.Box(-1, 1, (2,)), spaces.Tuple((spaces.Discrete(2),)))
        ),
        "NanObs-v0": dict(entry_point=lambda: FaultyEnv("obs")),
        "NanReward-v0": dict(entry_point=lambda: FaultyEnv("reward")),
        "RaisesInInit-v0": dict(entry_point=lambda: FaultyEnv("init")),
        "RaisesInStep-v0": dict(entry_point=lambda: FaultyEnv("step")),
        "WrongShapeObs-v0": dict(entry_point=lambda: FaultyEnv("shape")),
        "ReshapedObs-v0": dict(entry_point=lambda: FaultyEnv("reshape")),
        "ResetReshapedObs-v0": dict(entry_point=lambda: FaultyEnv("reshape", after=-1)),
        "HugeReward-v0": dict(entry_point=lambda: FaultyEnv("huge_reward")),
        "RaisesInClose-v0": dict(entry_point=lambda: FaultyEnv("close")),
        "OutOfRangeObs-v0": dict(entry_point=OutOfRangeEnv),
        "EmptyObs-v0": dict(entry_point=lambda: SpacesEnv(spaces.Box(-1, 1, (0,)), spaces.Discrete(2))),
        "FloatGrid-v0": dict(entry_point=lambda: SpacesEnv(spaces.Box(-1, 1, (10, 10)), spaces.Discrete(2))),
        "MultiDiscreteAct-v0": dict(
            entry_point=lambda: SpacesEnv(spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([3, 2]))
        ),
        "MultiBinaryAct-v0": dict(entry_point=lambda: SpacesEnv(spaces.Box(-1, 1, (3,)), spaces.MultiBinary(4))),
        "DiscreteObs-v0": dict(entry_point=lambda: SpacesEnv(spaces.Discrete(5, start=2), spaces.Discrete(3))),
        "Layered-v0": dict(entry_point=LayeredMDP),
        "DictObs-v0": dict(entry_point=lambda: SpacesEnv(
            spaces.Dict({"pos": spaces.Box(-1, 1, (2, 2)), "mode": spaces.Discrete(3)}), spaces.Box(-1, 1, (2,))
        )),
    }
    for env_id, kwargs in entries.items():
        if env_id not in registry:
            gym.register(id=env_id, **kwargs)


_register()
