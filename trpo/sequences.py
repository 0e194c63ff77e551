"""The batch of a recurrent policy or critic as sequences, for truncated backpropagation through time.

A batch of T steps x N envs is cut into chunks of `length` L steps per env: S = N * ceil(T / L) sequences, laid
out [L, S, ...] with the last chunk of each env padded (`valid` False there). Each sequence starts from the state
the rollout (or the critic's pass over the batch) had at its first step, and the state is reset inside it wherever
an episode starts (encoders.unroll), so the networks see exactly the histories the rollout saw.

The samples of a `Sequences` in flat form ([B, ...], B = valid steps) are in the order of `valid`'s True entries
(row-major over [L, S]); `flat_order` maps the batch's time-major [T, N] samples into that order.

Imports nothing of trpo and holds no parameters: it only reshapes and indexes tensors (the state is reset in
encoders.unroll, not here); no envs, config or randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def chunk(x: Tensor, length: int) -> Tensor:
    """[T, N, ...] -> [L, S, ...], S = N * ceil(T / L): env n's chunk c is sequence c * N + n; zeros pad the end."""
    steps, n = x.shape[0], x.shape[1]
    chunks = -(-steps // length)
    padded = x.new_zeros((chunks * length, *x.shape[1:]))
    padded[:steps] = x
    lead = padded.reshape(chunks, length, n, *x.shape[2:]).transpose(0, 1)
    return lead.reshape(length, chunks * n, *x.shape[2:])


@dataclass(frozen=True)
class Sequences:
    """Inputs of a recurrent network for a batch of sequences (see the module docstring)."""

    obs: Tensor  # [L, S, D]
    starts: Tensor  # [L, S] bool: the step starts an episode (the state is reset before it)
    state: Tensor  # [S, state_dim]: the state each sequence starts from
    valid: Tensor  # [L, S] bool: False on padding
    position: Tensor  # [L, S] int64: each valid step's index in the flat (valid) order, -1 on padding

    @classmethod
    def of(cls, obs: Tensor, starts: Tensor, states: Tensor, length: int) -> tuple[Sequences, Tensor]:
        """The sequences of a batch (obs [T, N, D], starts [T, N], states [T, N, state_dim]: the state at each
        step), and `flat_order` [T * N]: index i of the flat sequence order holds time-major sample flat_order[i]."""
        steps, n = obs.shape[0], obs.shape[1]
        valid = chunk(torch.ones(steps, n, dtype=torch.bool, device=obs.device), length)
        order = chunk(torch.arange(steps * n, device=obs.device).reshape(steps, n), length)[valid]
        return cls(chunk(obs, length), chunk(starts, length), chunk(states, length)[0], valid,
                   _positions(valid)), order

    @property
    def size(self) -> int:
        """The number of sequences S."""
        return self.obs.shape[1]

    @property
    def length(self) -> int:
        return self.obs.shape[0]

    def subset(self, idx: Tensor | slice) -> tuple[Sequences, Tensor]:
        """The sequences `idx` and the flat positions of their valid steps (in the subset's own flat order)."""
        valid = self.valid[:, idx]
        taken = self.position[:, idx][valid]
        return Sequences(self.obs[:, idx], self.starts[:, idx], self.state[idx], valid, _positions(valid)), taken


def _positions(valid: Tensor) -> Tensor:
    position = torch.full(valid.shape, -1, dtype=torch.int64, device=valid.device)
    position[valid] = torch.arange(int(valid.sum()), device=valid.device)
    return position


Inputs = Tensor | Sequences  # what the networks take: flat observations [B, D], or sequences


def select(inputs: Inputs, idx: Tensor | slice) -> tuple[Inputs, Tensor | slice]:
    """A subset of the units of `inputs` (samples of flat observations, sequences of `Sequences`), and the indices
    of its samples in the flat tensors that go with `inputs` (advantages, targets, ...)."""
    if isinstance(inputs, Sequences):
        return inputs.subset(idx)
    return inputs[idx], idx


def units(inputs: Inputs) -> int:
    """What minibatches and held-out shares are drawn from: samples, or whole sequences."""
    return inputs.size if isinstance(inputs, Sequences) else inputs.shape[0]


def unit_steps(inputs: Inputs) -> int:
    """Steps per unit: 1 for flat samples, L for sequences (a minibatch of M samples takes M // L sequences)."""
    return inputs.length if isinstance(inputs, Sequences) else 1
