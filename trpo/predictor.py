"""predict and evaluation's actions: observations as the user or the env gives them (one or a batch, an action
mask from the observation or from info) encoded, checked, the recurrent state and episode starts handled, and the
actions asked of the live acting policy (policy.live), returned as the env takes them.

It reads the learner's actor, distribution and observation statistics as they are at each call; it trains nothing
and writes nothing, and never imports the agent.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from trpo import policy as policy_lib
from trpo.distributions import ActionDistribution
from trpo.errors import EnvError
from trpo.evaluation import Act
from trpo.networks import Actor
from trpo.normalization import ObsNormalizer
from trpo.observations import MASK_KEY, ObsEncoder, ObservationError


class Parts(Protocol):
    """What acting reads of the learner, at each call (so that a part the agent replaces is the one that acts)."""

    encoder: ObsEncoder
    actor: Actor
    dist: ActionDistribution
    obs_norm: ObsNormalizer


class Predictor:
    """Actions of the learner's actor (`parts`) for raw observations; sampled actions draw their noise from `gen`
    (seeded by the agent, saved in its checkpoints)."""

    def __init__(self, parts: Parts, device: torch.device, seed: int) -> None:
        self.parts, self.device = parts, device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    @property
    def encoder(self) -> ObsEncoder:
        return self.parts.encoder

    @property
    def actor(self) -> Actor:
        return self.parts.actor

    @property
    def dist(self) -> ActionDistribution:
        return self.parts.dist

    @property
    def obs_norm(self) -> ObsNormalizer:
        return self.parts.obs_norm

    @torch.no_grad()
    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True,
                action_mask: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """TRPO.predict (its docstring says the contract)."""
        if self.encoder.mask_from == "info" and action_mask is None:
            raise ValueError("this env masks its actions: pass action_mask=info['action_mask']")
        try:
            batched = self.encoder.is_batched(obs)
            encoded = self.encoded(obs, batched, action_mask)
        except ObservationError as exc:
            raise ObservationError(f"predict: {exc}; pass one observation or a batch of them (leading dim)") from None
        finite = np.isfinite(encoded).all(axis=1)
        if not finite.all():  # the policy would answer it with an action all the same, a meaningless one
            which = f"observation {int(np.flatnonzero(~finite)[0])} of the batch" if batched else "the observation"
            raise ObservationError(f"predict: {which} holds NaN or an infinity")
        action, state = self.act(encoded, deterministic, self.state_in(state, len(encoded)),
                                 _starts(episode_start, len(encoded)))
        return (action if batched else action[0]), None if state is None else state.cpu().numpy()

    def episode_act(self, deterministic: bool) -> Act:
        """evaluation.Act for episodes stepped one observation at a time (run_episodes resets the state)."""
        going_on = np.zeros(1, bool)

        def act(obs: Any, info: dict[str, Any], state: Any) -> tuple[Any, Any]:
            mask = info.get(MASK_KEY) if self.encoder.mask_from == "info" else None
            encoded = self.encoded(obs, False, mask)
            if not np.isfinite(encoded).all():  # as in training (rollout runner): no action answers it meaningfully
                raise EnvError("environment returned a non-finite observation (NaN or inf) in an evaluation episode")
            actions, state = self.act(encoded, deterministic, state, going_on)
            return actions[0], state

        return act

    def encoded(self, obs: Any, batched: bool, action_mask: Any) -> np.ndarray:
        if batched:
            encoded = self.encoder(obs, action_mask)
        else:
            encoded = self.encoder.one(obs, None if action_mask is None else {MASK_KEY: action_mask})[None]
        bad = self.encoder.empty_mask_row(encoded)
        if bad is not None:
            raise ValueError(f"the action mask of observation {bad} allows no action")
        return encoded

    def state_in(self, state: Any, rows: int) -> Tensor | None:
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
    def act(self, encoded: np.ndarray, deterministic: bool, state: Tensor | None,
            starts: np.ndarray) -> tuple[np.ndarray, Tensor | None]:
        """Env actions [B, ...] for encoded observations through the acting seam (policy.live), and the next state."""
        noise = None if deterministic else self.dist.noise((len(encoded), *self.actor.noise_shape), self.gen,
                                                           self.device)
        action, state = policy_lib.live(self.actor, self.dist, self.obs_norm.frozen()).act(encoded, state, starts,
                                                                                             noise)
        return self.dist.to_env(action.cpu().numpy()), state


def _starts(episode_start: Any, rows: int) -> np.ndarray:
    """predict's episode_start as [rows] bool (None: no observation starts an episode)."""
    if episode_start is None:
        return np.zeros(rows, bool)
    arr = np.asarray(episode_start)
    if arr.size != rows or arr.dtype.kind not in "biuf":
        raise ValueError(f"episode_start must hold one bool per observation ({rows}), got {episode_start!r}")
    return arr.reshape(rows).astype(bool)
