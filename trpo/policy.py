"""Acting: the one interface through which every rollout backend (sync, subprocess, Ray), vine's branches,
`predict` and `evaluate` choose actions.

    actions, state = acting.act(obs, state, starts, noise)

obs: encoded observations [B, D] as the env gave them (the acting policy normalizes them with pi_old's
statistics: fixed for the batch, or with obs_norm_update 'step' first merged with these observations); state: the
recurrent state [B, state_dim] (None for a feed-forward policy); starts: [B] bool, True where an episode starts
(the state is reset there first); noise: the distribution's noise for these samples, as
`ActionDistribution.noise` draws it, `Actor.noise_shape` per sample (gSDE: an exploration matrix), drawn ahead for
a whole batch from the run's generator (`batch_noise`) so that every backend gives the same actions; or None for
the most likely action.

An acting policy is a frozen snapshot of pi_old, picklable, sent once per batch to every env runner. Its actions
are those of pi_old; their log-probabilities under pi_old are computed in the learner in one batched pass over the
batch (RolloutCollector.finish), with the same torch modules the update differentiates, so the probability ratio at
theta_old is exactly 1.

One implementation per kind of actor (`Actor.kind`), one line each in ACTING:
    mlp        `NumpyMLP`: the MLP as float32 numpy matmuls (a few microseconds per step, where torch costs tens)
    cnn        `TorchActing`, one observation at a time (batched convolutions differ in the last bits with the
               batch size, so envs split over processes would get other actions)
    recurrent  `TorchActing`, one observation at a time, carrying the LSTM/GRU state
and `TorchActing` batched on the actor's device for `predict` and `evaluate` (`live`).

It never steps an env (the runners do) and never changes the actor: a rollout's acting policy is a copy of its
weights, `live` only reads them. Its only randomness is the noise handed to `act`, which `batch_noise` draws from
the generator it is given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trpo.distributions import ActionDistribution, apply_mask
from trpo.encoders import MLPBody
from trpo.networks import Actor
from trpo.normalization import FrozenObsNorm, ObsNorm


class Acting(Protocol):
    """pi_old as the envs see it (see the module docstring)."""

    def initial_state(self, batch: int) -> Any: ...

    def act(self, obs: Any, state: Any, starts: Any, noise: Any) -> tuple[Any, Any]: ...


class NumpyMLP:
    """The actor's MLP up to params[0] (logits or the Gaussian mean) as float32 numpy matmuls; the distribution
    turns that, the last hidden layer's features and the noise into actions (`numpy_explorer`: the rest of params,
    a Gaussian's log-std, depends on no state and enters as the noise's scale; gSDE's noise is an exploration
    matrix per sample, applied to the features)."""

    def __init__(self, actor: Actor, dist: ActionDistribution, obs_norm: ObsNorm) -> None:
        assert isinstance(actor.body, MLPBody)  # ACTING gives NumpyMLP the MLP actors only
        linears = [m for m in actor.body if isinstance(m, nn.Linear)]

        def as_np(t: torch.Tensor) -> np.ndarray:
            return np.array(t.detach().cpu().numpy())  # a copy: the actor trains on

        self.layers = [(as_np(m.weight).T.copy(), as_np(m.bias)) for m in [*linears, actor.head.linear]]
        self.activation = actor.activation
        self.mask_dim = actor.mask_dim
        self.dist = dist
        self.obs_norm = obs_norm
        self.explore = dist.numpy_explorer(actor.head)

    def initial_state(self, batch: int) -> None:
        return None

    def head(self, obs: np.ndarray) -> np.ndarray:
        """params[0] for encoded observations [B, D]."""
        return self._forward(obs)[1]

    def _forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the last hidden layer's features, params[0])."""
        # einsum without BLAS computes every row the same way whatever the number of rows (BLAS does not), so
        # envs split over worker processes get bit-identical actions to envs stepped together.
        h = x = self.obs_norm(obs)
        for w, b in self.layers[:-1]:
            h = np.einsum("ij,jk->ik", h, w) + b
            h = np.tanh(h) if self.activation == "tanh" else np.maximum(h, 0.0)
        w, b = self.layers[-1]
        out = np.einsum("ij,jk->ik", h, w) + b
        return h, apply_mask(out, x[:, -self.mask_dim:]) if self.mask_dim else out

    def act(self, obs: np.ndarray, state: None, starts: np.ndarray, noise: np.ndarray | None) -> tuple[Any, None]:
        features, head = self._forward(obs)
        if noise is None:
            return self.dist.pick(head), None
        return self.explore(head, features, noise), None


class TorchActing:
    """The actor's torch modules. For rollouts (`rows`): a CPU copy run one observation at a time, so that every
    env's action is computed the same way however envs are split over processes. For predict and evaluate: the
    live actor on its device, batched. Carries a recurrent actor's state."""

    def __init__(self, actor: Actor, dist: ActionDistribution, obs_norm: ObsNorm, rows: bool = True) -> None:
        self.actor = copy.deepcopy(actor).cpu().requires_grad_(False) if rows else actor
        self.dist = dist
        self.obs_norm = obs_norm
        self.rows = rows

    def initial_state(self, batch: int) -> Any:
        state = self.actor.initial_state(batch)
        return state.cpu().numpy() if self.rows and state is not None else state

    @torch.no_grad()
    def act(self, obs: np.ndarray, state: Any, starts: Any, noise: Any) -> tuple[Any, Any]:
        if state is not None:  # a new episode starts from the zero state
            state = state * (1 - torch.as_tensor(starts, device=state.device).to(state.dtype)[:, None]) \
                if isinstance(state, torch.Tensor) else np.where(np.asarray(starts)[:, None], 0.0, state)
        if not self.rows:
            x = torch.as_tensor(self.obs_norm(obs), device=self.actor.head_device)
            params, features, state = self.actor.step(x, state)
            return self._pick(params, features, noise), state
        x = torch.from_numpy(np.ascontiguousarray(self.obs_norm(obs)))
        outs: list[tuple[torch.Tensor, ...]] = []
        states: list[torch.Tensor] = []
        for i in range(len(x)):
            s = None if state is None else torch.from_numpy(np.ascontiguousarray(state[i : i + 1]))
            step_params, features, s = self.actor.step(x[i : i + 1], s)
            outs.append((*step_params, features))
            if s is not None:
                states.append(s)
        *joined, features = (torch.cat(parts) for parts in zip(*outs, strict=True))
        noise = None if noise is None else torch.from_numpy(np.asarray(noise))
        action = self._pick(tuple(joined), features, noise).numpy()
        return action, None if state is None else torch.cat(states).numpy()

    def _pick(self, params: tuple[torch.Tensor, ...], features: torch.Tensor, noise: Any) -> Any:
        if noise is None:
            return self.dist.mode(params)
        return self.dist.explore(params, features, noise, self.actor.head)


class PeriodicNoise:
    """gSDE's noise for a batch: one exploration matrix per env held for `every` steps (sde_sample_freq; -1: the
    whole batch). Indexed as the runners index noise arrays: noise[t] for step t, noise[:, lo:hi] for a share of
    the envs; `shape[0]` is the number of steps."""

    def __init__(self, matrices: np.ndarray, every: int, steps: int) -> None:
        self.matrices = matrices  # [P, N, F, A]
        self.every = every if every > 0 else steps
        self.shape = (steps, *matrices.shape[1:])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):  # [:, lo:hi]: a share of the envs
            return PeriodicNoise(self.matrices[:, key[1]], self.every, self.shape[0])
        return self.matrices[key // self.every]


def batch_noise(actor: Actor, dist: ActionDistribution, steps: int, num_envs: int, sde_sample_freq: int,
                generator: torch.Generator) -> np.ndarray | PeriodicNoise:
    """A batch's noise, drawn from the run's generator: [T, N, head_dim], or gSDE's exploration matrices."""
    if not dist.held_noise:
        return dist.noise((steps, num_envs, dist.head_dim), generator).numpy()
    periods = 1 if sde_sample_freq <= 0 else -(-steps // sde_sample_freq)
    return PeriodicNoise(dist.noise((periods, num_envs, *actor.noise_shape), generator).numpy(), sde_sample_freq,
                         steps)


# Actor.kind -> the acting policy for rollouts; a new kind of actor is a class of `Acting` and a line here.
ACTING: dict[str, Callable[[Actor, ActionDistribution, ObsNorm], Acting]] = {
    "mlp": NumpyMLP,
    "cnn": TorchActing,
    "recurrent": TorchActing,
}


def snapshot(actor: Actor, dist: ActionDistribution, obs_norm: ObsNorm) -> Acting:
    """pi_old frozen for one batch's rollouts: the actor's weights and the observation statistics (fixed, or
    moving with each step's observations: obs_norm_update 'step')."""
    return ACTING[actor.kind](actor, dist, obs_norm)


def live(actor: Actor, dist: ActionDistribution, obs_norm: FrozenObsNorm) -> TorchActing:
    """Acting with the actor as it is, batched on its device: predict and evaluate."""
    return TorchActing(actor, dist, obs_norm, rows=False)
